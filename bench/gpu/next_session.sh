#!/usr/bin/env bash
# What the H100 has not yet run (issue 10, quantization), in one command of under 10 minutes:
#   source .gpu/env.sh && bash bench/gpu/next_session.sh
# 1. the int8/int4 kernels and the quantized model on the GPU, 2. gpt2 and gpt2-xl B=1 decode, bf16 vs int8 vs int4,
# both backends, in one run (the floors: int8 <= 0.7x and int4 <= 0.5x bf16 on the same backend).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 200 python -m pytest -q -x tests/test_kernels_quant_matmul.py tests/test_quantize.py > "$OUT/quant_tests.txt" 2>&1
tail -3 "$OUT/quant_tests.txt"
timeout 300 python -m bench.decode --model gpt2,gpt2-xl --backend pallas,xla --batch 1 --tokens 256 --reps 3 \
  --quantize none,int8,int4,int8+head --breakdown 8 --out "$OUT/decode_quant.json" > "$OUT/decode_quant.txt" 2>&1
grep -A12 "^model" "$OUT/decode_quant.txt" || grep '^{' "$OUT/decode_quant.txt" | cut -c1-200
# 3. HF transformers torch.compile decode (static cache; CUDA graphs with a step mark per forward, else Inductor)
timeout 200 python -m bench.decode --model gpt2 --backend pallas --batch 1 --tokens 256 --reps 3 --hf eager,compile \
  --out "$OUT/decode_hf.json" > "$OUT/decode_hf.txt" 2>&1
grep -A6 "^model" "$OUT/decode_hf.txt" || grep '^{' "$OUT/decode_hf.txt" | cut -c1-300
