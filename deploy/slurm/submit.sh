#!/bin/bash
# Submit the extraction array (extract.sbatch) and, after it, the merge that publishes the features:
#   DATA=/shared/m3ed SHARDS=16 deploy/slurm/submit.sh [extra m3ed-extract options]
# The merge depends on the array with afterany: a task that ended with data failures (exit 1) is
# finished too, and `m3ed merge` names any dialogue still missing and its shard (re-run that task:
# sbatch --array=I deploy/slurm/extract.sbatch, then the merge again).
set -euo pipefail

: "${DATA:?set DATA to the dataset directory on the shared filesystem}"
export DATA OUT=${OUT:-$DATA/features}
SHARDS=${SHARDS:-8}
here=$(cd "$(dirname "$0")" && pwd)
activate=${M3ED_VENV:+. $M3ED_VENV/bin/activate && }   # --wrap runs /bin/sh

mkdir -p logs   # Slurm does not create the directory of --output
array=$(sbatch --parsable --array="0-$((SHARDS - 1))" "$here/extract.sbatch" "$@")
array=${array%%;*}   # "jobid;cluster" on federated clusters
merge=$(sbatch --parsable --dependency="afterany:$array" --job-name=m3ed-merge \
    --cpus-per-task=2 --mem=8G --time=02:00:00 --output=logs/m3ed-merge-%j.out \
    --wrap "${activate}m3ed merge '$OUT'")
echo "extraction array $array ($SHARDS shards), then merge ${merge%%;*}; OUT=$OUT"
