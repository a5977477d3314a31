#!/usr/bin/env bash
# What the H100 has not yet run (issue 10, quantization), as two commands of under 10 minutes each:
#   source .gpu/env.sh && bash bench/gpu/next_session.sh 1   # tests + Pallas decode bf16 / int8 / int4 / int8+head
#   source .gpu/env.sh && bash bench/gpu/next_session.sh 2   # XLA decode bf16 / int8 / int4 + HF torch.compile decode
#   source .gpu/env.sh && bash bench/gpu/next_session.sh 3   # issue 6: the Mosaic GPU attention, compiled and timed
# The floors: int8 <= 0.7x and int4 <= 0.5x the bf16 ms/token of the same backend in the same run.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
show() { grep -A14 "^model" "$1" || grep '^{' "$1" | cut -c1-200; }
if [ "${1:-1}" = 3 ]; then
  timeout 240 python -m pytest -q tests/test_kernels_attention_mgpu.py tests/test_kernels_lowering.py \
    > "$OUT/mgpu_tests.txt" 2>&1; tail -5 "$OUT/mgpu_tests.txt"
  timeout 200 python -m bench.kernels --quick --out "$OUT/kernels_mgpu.json" > "$OUT/kernels_mgpu.txt" 2>&1
  grep -E "attention|not run|pallas_mosaic" "$OUT/kernels_mgpu.txt" | head -30
  for a in triton mosaic; do
    JAXGPT_ATTENTION=$a timeout 100 python -m bench.prefill --model gpt2,gpt2-xl --backend pallas --batch 8 --seq 1024 \
      > "$OUT/prefill_$a.txt" 2>&1; echo "== attention $a"; tail -4 "$OUT/prefill_$a.txt"
  done
elif [ "${1:-1}" = 1 ]; then
  timeout 200 python -m pytest -q -x tests/test_kernels_quant_matmul.py tests/test_quantize.py tests/test_kernels_lowering.py \
    > "$OUT/quant_tests.txt" 2>&1; tail -3 "$OUT/quant_tests.txt"
  timeout 330 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
    --quantize none,int8,int4,int8+head --breakdown 8 --out "$OUT/decode_quant_pallas.json" > "$OUT/decode_quant_pallas.txt" 2>&1
  show "$OUT/decode_quant_pallas.txt"
else
  timeout 250 python -m bench.decode --model gpt2,gpt2-xl --backend xla --batch 1 --tokens 256 --reps 3 \
    --quantize none,int8,int4 --out "$OUT/decode_quant_xla.json" > "$OUT/decode_quant_xla.txt" 2>&1
  show "$OUT/decode_quant_xla.txt"
  # HF transformers torch.compile decode (static cache; CUDA graphs with a step mark per forward, else Inductor)
  timeout 280 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 --hf compile \
    --out "$OUT/decode_hf.json" > "$OUT/decode_hf.txt" 2>&1
  show "$OUT/decode_hf.txt"
fi
