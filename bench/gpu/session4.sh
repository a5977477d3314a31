#!/usr/bin/env bash
# Session 4's GPU calls (each under 10 minutes; every step writes under $OUT as it goes):
#   source .gpu/env.sh && bash bench/gpu/session4.sh sweep    # Mosaic attention on the GPU + decode tile sweep
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
case "${1:-sweep}" in
sweep)
  timeout 240 python -m bench.decode_sweep --model gpt2-xl --rows 1 --formats bf16,int8,int4 \
    --out "$OUT/sweep_xl.json" --table "$OUT/h100_decode_table.json" > "$OUT/sweep_xl.txt" 2>&1
  grep -v "failed" "$OUT/sweep_xl.txt" | grep -v -i warn | tail -14
  timeout 80 python -m pytest -q -p no:cacheprovider tests/test_kernels_attention_mgpu.py > "$OUT/mgpu_tests.txt" 2>&1
  tail -4 "$OUT/mgpu_tests.txt"
  timeout 150 python -m bench.kernels --mode attention --out "$OUT/attention.json" > "$OUT/attention.txt" 2>&1
  grep -E "^attention|n/a" "$OUT/attention.txt" | cut -c1-120 | head -40
  ;;
esac
