#!/usr/bin/env bash
# Issue 9 on a multi-GPU kind (e.g. nvidia-h100-x2): the multi-device tests on real GPUs, then the scaling bench.
#   source .gpu/env.sh && bash bench/gpu/multi_gpu.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
timeout 200 python -m pytest -q tests/test_sharding.py 2>&1 | tee "$OUT/sharding_tests.txt" | tail -3
timeout 330 python -m bench.scaling --model gpt2,gpt2-xl --tp-model gpt2-xl,gpt2-large --out "$OUT" 2>&1 \
  | grep -v '^{' | tee "$OUT/scaling.txt" | tail -20
