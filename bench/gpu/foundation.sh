#!/usr/bin/env bash
# Issue 3 on the GPU machine: predict + parity (gpt2, gpt2-xl; float32, bfloat16), the test suite, and the
# XLA-backend prefill baseline. Run from the repo root after `source .gpu/env.sh`; logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python -m jaxgpt predict "Dobby is" -v 2>&1 | tee "$OUT/predict_gpt2.txt"
python -m jaxgpt predict "Dobby is" --model gpt2-xl --dtype bfloat16 -v 2>&1 | tee "$OUT/predict_xl.txt"
for m in gpt2 gpt2-xl; do
  for d in float32 bfloat16; do
    python -m jaxgpt parity "Dobby is" "The quick brown fox jumps over the lazy dog" --model $m --dtype $d \
      --steps 8 -v > "$OUT/parity_${m}_${d}.txt" 2>&1; echo "parity $m $d rc=$?" | tee -a "$OUT/summary.txt"
    grep -E "^\[|PASS|FAIL|compile" "$OUT/parity_${m}_${d}.txt" | tee -a "$OUT/summary.txt"
  done
done
python -m pytest -q -x tests 2>&1 | tail -5 | tee -a "$OUT/summary.txt"
python -m bench.prefill --model gpt2,gpt2-xl --dtype bfloat16 --batch 8 --seq 1024 --breakdown 8 \
  --out "$OUT/prefill_xla.json" 2>&1 | tee "$OUT/prefill.txt" | tail -25
