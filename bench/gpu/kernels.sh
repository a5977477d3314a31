#!/usr/bin/env bash
# Issue 4 on the GPU: kernel tests compiled on the H100, autotune, kernel bench, prefill both backends.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STAGE=${1:-all}
if [[ $STAGE == all || $STAGE == test ]]; then
  timeout 150 python -m pytest -q -x ${TESTS:-tests/test_kernels_*.py tests/test_pallas_backend.py} 2>&1 | tee "$OUT/kernel_tests.txt" | tail -15
fi
if [[ $STAGE == all || $STAGE == tune ]]; then
  timeout 150 python -m pallas_kernels.autotune 2>&1 | tee "$OUT/autotune.txt" | grep -v failed | tail -30
  cp pallas_kernels/tuning_tables/*.json "$OUT/" 2>/dev/null
fi
if [[ $STAGE == all || $STAGE == bench ]]; then
  timeout 130 python -m bench.kernels --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.txt" | tail -40
  timeout 130 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --dtype bfloat16 --batch 8 --seq 1024 \
    --breakdown 12 --out "$OUT/prefill.json" 2>&1 | tee "$OUT/prefill.txt" | tail -40
fi
