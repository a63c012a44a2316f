#!/usr/bin/env bash
# The serving core's table with candidates scored on a GPU, in one device call (issue: "on an H200,
# the same table for the core"). Prepare here once:  bash bench/device/fetch_wheels.sh
# Then the device tool:  run  command="bash bench/device/serving_gpu.sh"  carry=[".whl"]  timeout_s=540
# Writes to $OUT (the device tool's folder; bench/out/device elsewhere): gpu.txt, the CUDA parity
# tests' log, and the table (bench/serving_latency.py --scoring-device cuda; the user side, the
# model's own pooling and the naive baselines run on the machine's CPU cores).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out/device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest tests/serving/test_core.py -k "cuda or parity" -q -p no:cacheprovider 2>&1 | tee "$OUT/serving_cuda_tests.log"
timeout 330 python3 bench/serving_latency.py --scoring-device cuda --threads 16 --precision fp32 bf16 --events 256 1024 4096 \
    --candidates 1000 5000 10000 --repeats 30 --naive-repeats 1 --bst-candidates 8 2>&1 | tee "$OUT/serving_latency_gpu.md"
