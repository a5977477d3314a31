#!/usr/bin/env bash
# What the H100 has not yet run (issues 5, 7, 8), in one command of under 10 minutes:
#   source .gpu/env.sh && bash bench/gpu/next_session.sh
# 1. the fused decode step (opt-in until this passes), 2. the sharded paths on a mesh of one GPU,
# 3. the decode benchmark with the fused step, 4. the quick bench command.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
JAXGPT_FUSED_DECODE=1 timeout 200 python -m pytest -q -x tests/test_kernels_decode_attention.py \
  tests/test_kernels_matmul.py tests/test_generate.py tests/test_sharding.py -k "not 8192" 2>&1 | tee "$OUT/tests.txt" | tail -3
JAXGPT_FUSED_DECODE=1 timeout 60 python -m jaxgpt parity "Dobby is" "The quick brown fox" --model gpt2-xl --dtype bfloat16 \
  --backend pallas --steps 40 --device gpu 2>&1 | grep -E "^\[|PASS|FAIL" | tee "$OUT/parity_xl_pallas_fused.txt"
JAXGPT_FUSED_DECODE=1 timeout 150 python -m bench.decode --model gpt2,gpt2-xl --backend xla,pallas --batch 1,8 \
  --tokens 256 --reps 3 --breakdown 12 --out "$OUT/decode_fused.json" 2>&1 | grep -v '^{' | tee "$OUT/decode_fused.txt" | tail -30
timeout 150 python -m jaxgpt bench all --quick --out "$OUT/bench" 2>&1 | tail -40
