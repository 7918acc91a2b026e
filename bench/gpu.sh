#!/usr/bin/env bash
# On a CUDA GPU machine: the feature stages from one command (default --workers) against --workers 1
# and 1, 4, 8 and 16 shards side by side (x real time, the GPU's busy share per stage from NVML, cores
# busy, peak GPU memory, the M3ED corpus's projected hours; bench/results.json key end_to_end_cuda),
# then the detection-schedule agreement there (asd_agreement_cuda), then the CUDA tests.
#   bash bench/gpu.sh [extra bench_gpu.py options, e.g. --copies 40 --shards 4]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 M3ED_CACHE=${M3ED_CACHE:-$PWD/.cache/m3ed}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: bench/gpu.sh needs one")'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" bench/bench_gpu.py --device cuda --precision bf16 "$@"
"$PY" bench/bench_asd_agreement.py --device cuda
"$PY" -m pytest -q tests/test_cuda.py
