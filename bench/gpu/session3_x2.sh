#!/usr/bin/env bash
# Session 3, one call on nvidia-h100-x2 (issues 7, 8, 9), under 10 minutes:
#   source .gpu/env.sh && bash bench/gpu/session3_x2.sh
# 1. the fused decode step against the split-K default (Pallas backend, GPU 0 alone), 2. the multi-device tests on
# both GPUs, 3. the scaling bench (data parallel 1-2 GPUs, tensor parallel gpt2-large 1-2 GPUs).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
for f in 1 0; do
  CUDA_VISIBLE_DEVICES=0 JAXGPT_FUSED_DECODE=$f timeout 100 python -m bench.decode --model gpt2,gpt2-xl \
    --backend pallas --batch 1,8 --tokens 256 --reps 3 --breakdown 10 --out "$OUT/decode_fused$f.json" \
    > "$OUT/decode_fused$f.txt" 2>&1
  echo "== JAXGPT_FUSED_DECODE=$f"; grep -A5 "^model" "$OUT/decode_fused$f.txt" || grep '^{' "$OUT/decode_fused$f.txt" | cut -c1-200
done
timeout 130 python -m pytest -q tests/test_sharding.py > "$OUT/sharding_tests.txt" 2>&1; tail -3 "$OUT/sharding_tests.txt"
timeout 240 python -m bench.scaling --model gpt2,gpt2-xl --tp-model gpt2-large --backend pallas --out "$OUT" \
  > "$OUT/scaling.txt" 2>&1
grep -E "^(DP|TP|NVIDIA)|Error" "$OUT/scaling.txt" | tail -12
