#!/usr/bin/env bash
# What the GPU has not yet run after session 5, as one command of under 10 minutes:
#   source .gpu/env.sh && bash bench/gpu/next_session.sh
# The block kernel with int8 weights (JAXGPT_DECODE_LAYER_INT8=1; CPU-verified only): its GPU tests, then gpt2-xl
# and gpt2 B=1 decode, bf16 / int8 per-op / int8 on the block kernel, one run (issue 10's ratio is int8 ÷ bf16).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py -k "int8 or lowers" \
  > "$OUT/int8_block_tests.txt" 2>&1
echo "== block kernel int8 tests rc=$?"; tail -1 "$OUT/int8_block_tests.txt" | cut -c1-200
for f in 0 1; do
  q=none,int8; [ $f = 1 ] && q=none,int8,int4
  JAXGPT_DECODE_LAYER_INT8=$f timeout 210 python -m bench.decode --model gpt2-xl,gpt2 --backend pallas --batch 1 \
    --tokens 256 --reps 3 --quantize $q --out "$OUT/decode_int8block$f.json" > "$OUT/decode_int8block$f.txt" 2>&1
  echo "== JAXGPT_DECODE_LAYER_INT8=$f rc=$?"; grep -A7 "^model" "$OUT/decode_int8block$f.txt" | cut -c1-130
done
