#!/usr/bin/env bash
# The end-to-end benchmark on a CUDA GPU (bf16 autocast), then 4 shards side by side on the same GPU,
# then the detection-schedule agreement there. Writes bench/results.json keys end_to_end_cuda,
# shards_cuda and asd_agreement_cuda (other keys kept) and prints the peak GPU memory in use while the
# pipeline ran (nvidia-smi sampled every 0.5 s).
#   bash bench/gpu.sh [extra bench_pipeline.py options, e.g. --copies 20]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 M3ED_CACHE=${M3ED_CACHE:-$PWD/.cache/m3ed}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: bench/gpu.sh needs one")'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
MEMORY=$(mktemp)
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$MEMORY" &
SAMPLER=$!
"$PY" bench/bench_pipeline.py --device cuda --precision bf16 "$@"
kill "$SAMPLER"
echo "peak GPU memory in use during the pipeline: $(sort -n "$MEMORY" | tail -1) MiB"
"$PY" bench/bench_shards.py --device cuda --precision bf16 --shards 4 --copies 14
"$PY" bench/bench_asd_agreement.py --device cuda
