#!/usr/bin/env bash
# What the GPU has not yet run after session 4, as commands of under 10 minutes each:
#   source .gpu/env.sh && bash bench/gpu/next_session.sh 1   # the rest of the GPU tests session 4's budgets cut off
#   source .gpu/env.sh && bash bench/gpu/next_session.sh 2   # whole-model prefill with the restricted Mosaic matmul
#                                                            # plan (xl's N = 1600 on Triton), vs all-Triton and XLA;
#                                                            # the matmul tiles with and without delay_release
#   source .gpu/env.sh && bash bench/gpu/next_session.sh 3   # issue 10: the fused quantized decode step
#                                                            # (JAXGPT_FUSED_QUANT=1) on the GPU, tests then decode
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ "${1:-1}" = 3 ]; then
  JAXGPT_FUSED_QUANT=1 timeout 200 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_quant_matmul.py \
    -k "partials or equals" > "$OUT/fused_quant_tests.txt" 2>&1; tail -3 "$OUT/fused_quant_tests.txt"
  for f in 0 1; do
    JAXGPT_FUSED_QUANT=$f timeout 150 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 \
      --tokens 256 --reps 3 --quantize none,int8,int4 --breakdown 6 --out "$OUT/decode_fq$f.json" \
      > "$OUT/decode_fq$f.txt" 2>&1
    echo "== JAXGPT_FUSED_QUANT=$f"; grep -A7 "^model" "$OUT/decode_fq$f.txt"
  done
elif [ "${1:-1}" = 1 ]; then
  timeout 280 python -m pytest -q -p no:cacheprovider tests/test_kernels_attention_mgpu.py \
    tests/test_kernels_quant_matmul.py tests/test_quantize.py tests/test_tuning.py > "$OUT/tests.txt" 2>&1
  tail -3 "$OUT/tests.txt"
  timeout 250 python -m pytest -q -p no:cacheprovider tests/test_pallas_backend.py tests/test_generate.py \
    > "$OUT/tests_model.txt" 2>&1
  tail -3 "$OUT/tests_model.txt"
else
  timeout 150 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --breakdown 8 \
    --out "$OUT/prefill.json" > "$OUT/prefill.txt" 2>&1
  grep -v -i warn "$OUT/prefill.txt" | tail -40 | cut -c1-150
  timeout 120 python -m bench.matmul_tiles --out "$OUT/matmul_tiles.json" > "$OUT/matmul_tiles.txt" 2>&1
  grep "^8192" "$OUT/matmul_tiles.txt" | cut -c1-400   # incl. delay_release: adopt it in plan() if it wins
  JAXGPT_MATMUL=triton timeout 100 python -m bench.prefill --model gpt2,gpt2-xl --backend pallas \
    --out "$OUT/prefill_triton.json" > "$OUT/prefill_triton.txt" 2>&1
  echo "== all-Triton matmuls"; grep -A3 "^model" "$OUT/prefill_triton.txt"
fi
