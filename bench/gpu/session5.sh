#!/usr/bin/env bash
# Session 5's GPU calls (each under 10 minutes; every step writes under $OUT as it goes):
#   source .gpu/env.sh && bash bench/gpu/session5.sh check   # session 4's unrun code: quantized kernel tests,
#                                                            # fused quantized decode, prefill with the new plan,
#                                                            # matmul tiles with delay_release
#   source .gpu/env.sh && bash bench/gpu/session5.sh layer   # the one-kernel decode block: tests, then decode
#                                                            # with it (JAXGPT_DECODE_LAYER=1) and without
#   ... layer2 .. layer5: bench.decode_layer per phase, plan sweeps, the scratch-row and prefetch variants, the
#   Mosaic matmul's bias fix (tests + prefill); final, final2: decode B=1/8 with and without the block kernel,
#   its tests and the full-size parity with it forced. To reproduce today's table: `final2`.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
case "${1:-check}" in
check)
  timeout 170 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_quant_matmul.py > "$OUT/quant_tests.txt" 2>&1
  echo "== quant_matmul tests"; tail -2 "$OUT/quant_tests.txt" | cut -c1-300
  for f in 0 1; do
    JAXGPT_FUSED_QUANT=$f timeout 110 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 \
      --tokens 256 --reps 3 --quantize none,int8,int4 --breakdown 12 --out "$OUT/decode_fq$f.json" \
      > "$OUT/decode_fq$f.txt" 2>&1
    echo "== JAXGPT_FUSED_QUANT=$f"; grep -A4 "^model" "$OUT/decode_fq$f.txt" | cut -c1-130
  done
  timeout 120 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --breakdown 8 \
    --out "$OUT/prefill.json" > "$OUT/prefill.txt" 2>&1
  echo "== prefill"; grep -A5 "^model" "$OUT/prefill.txt" | cut -c1-150
  timeout 100 python -m bench.matmul_tiles --out "$OUT/matmul_tiles.json" > "$OUT/matmul_tiles.txt" 2>&1
  echo "== matmul tiles"; grep "^8192" "$OUT/matmul_tiles.txt" | cut -c1-300
  ;;
layer)
  timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py > "$OUT/layer_tests.txt" 2>&1
  echo "== decode_layer tests rc=$?"; tail -4 "$OUT/layer_tests.txt" | cut -c1-300
  for f in 1 0; do
    JAXGPT_DECODE_LAYER=$f timeout 170 python -m bench.decode --model gpt2,gpt2-xl --backend pallas \
      --batch $([ $f = 1 ] && echo 1,8 || echo 1) --tokens 256 --reps 3 --breakdown 10 \
      --out "$OUT/decode_layer$f.json" > "$OUT/decode_layer$f.txt" 2>&1
    echo "== JAXGPT_DECODE_LAYER=$f rc=$?"; grep -A5 "^model" "$OUT/decode_layer$f.txt" | cut -c1-130
    grep -A8 "by kind" "$OUT/decode_layer$f.txt" | head -30 | cut -c1-100
  done
  ;;
layer2)
  timeout 200 python -m bench.decode_layer --out "$OUT/layer_xl.json" 2>&1 | grep -v -i warn > "$OUT/layer_xl.txt"
  cut -c1-160 "$OUT/layer_xl.txt"
  timeout 120 python -m bench.decode_layer --model gpt2 --out "$OUT/layer_gpt2.json" 2>&1 | grep -v -i warn \
    > "$OUT/layer_gpt2.txt"; head -9 "$OUT/layer_gpt2.txt" | cut -c1-160
  JAXGPT_DECODE_LAYER=1 timeout 150 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 \
    --tokens 256 --reps 3 --breakdown 6 --out "$OUT/decode_layer1.json" > "$OUT/decode_layer1.txt" 2>&1
  echo "== JAXGPT_DECODE_LAYER=1 rc=$?"; grep -A3 "^model" "$OUT/decode_layer1.txt" | cut -c1-130
  ;;
layer3)
  timeout 260 python -m bench.decode_layer --out "$OUT/layer_xl.json" 2>&1 | grep -v -i warn > "$OUT/layer_xl.txt"
  grep -v "five-call" "$OUT/layer_xl.txt" | cut -c1-130
  for f in 1 0; do
    JAXGPT_DECODE_LAYER=$f timeout 140 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1,8 \
      --tokens 256 --reps 3 --out "$OUT/decode_layer$f.json" > "$OUT/decode_layer$f.txt" 2>&1
    echo "== JAXGPT_DECODE_LAYER=$f rc=$?"; grep -A5 "^model" "$OUT/decode_layer$f.txt" | cut -c1-130
  done
  ;;
layer4)
  timeout 280 python -m bench.decode_layer --out "$OUT/layer_xl.json" 2>&1 | grep -v -i warn > "$OUT/layer_xl.txt"
  grep -v "five-call" "$OUT/layer_xl.txt" | cut -c1-130
  timeout 200 python -m bench.decode_layer --model gpt2 --out "$OUT/layer_gpt2.json" 2>&1 | grep -v -i warn \
    > "$OUT/layer_gpt2.txt"; grep -v "five-call" "$OUT/layer_gpt2.txt" | cut -c1-130
  ;;
final)
  timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py > "$OUT/layer_tests.txt" 2>&1
  echo "== decode_layer tests rc=$?"; tail -1 "$OUT/layer_tests.txt" | cut -c1-200
  for f in 1 0; do
    JAXGPT_DECODE_LAYER=$f timeout 120 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 \
      --tokens 256 --reps 3 --out "$OUT/decode_layer$f.json" > "$OUT/decode_layer$f.txt" 2>&1
    echo "== JAXGPT_DECODE_LAYER=$f rc=$?"; grep -A3 "^model" "$OUT/decode_layer$f.txt" | cut -c1-130
  done
  timeout 170 python -m pytest -q -x -p no:cacheprovider tests/test_pallas_backend.py -k "gpu or block" \
    > "$OUT/parity_tests.txt" 2>&1
  echo "== full-size parity (gpt2 B1 decode on the block kernel) rc=$?"; tail -1 "$OUT/parity_tests.txt" | cut -c1-200
  ;;
layer5)
  timeout 100 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_matmul_mgpu.py > "$OUT/mm_tests.txt" 2>&1
  echo "== matmul_mgpu tests (bias in its own dtype) rc=$?"; tail -1 "$OUT/mm_tests.txt" | cut -c1-200
  timeout 90 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --breakdown 4 \
    --out "$OUT/prefill.json" > "$OUT/prefill.txt" 2>&1
  echo "== prefill"; grep -A5 "^model" "$OUT/prefill.txt" | cut -c1-120
  timeout 100 python -m bench.decode_layer --quick --out "$OUT/layer_xl.json" 2>&1 | grep -v -i warn > "$OUT/layer_xl.txt"
  grep -v "five-call" "$OUT/layer_xl.txt" | cut -c1-130
  timeout 80 python -m bench.decode_layer --quick --model gpt2 2>&1 | grep -v -i warn > "$OUT/layer_gpt2.txt"
  grep -v "five-call" "$OUT/layer_gpt2.txt" | cut -c1-130
  timeout 180 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py > "$OUT/layer_tests.txt" 2>&1
  echo "== decode_layer tests rc=$?"; tail -1 "$OUT/layer_tests.txt" | cut -c1-200
  ;;
final2)
  for f in 1 0; do
    JAXGPT_DECODE_LAYER=$f timeout 150 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1,8 \
      --tokens 256 --reps 3 --out "$OUT/decode_layer$f.json" > "$OUT/decode_layer$f.txt" 2>&1
    echo "== JAXGPT_DECODE_LAYER=$f rc=$?"; grep -A5 "^model" "$OUT/decode_layer$f.txt" | cut -c1-130
  done
  timeout 100 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py -k "scratch or chained" \
    > "$OUT/layer_tests.txt" 2>&1
  echo "== decode_layer tests rc=$?"; tail -1 "$OUT/layer_tests.txt" | cut -c1-200
  JAXGPT_DECODE_LAYER=1 timeout 100 python -m pytest -q -x -p no:cacheprovider tests/test_pallas_backend.py \
    -k "full_size" > "$OUT/parity_tests.txt" 2>&1
  echo "== full-size parity, block kernel forced rc=$?"; tail -1 "$OUT/parity_tests.txt" | cut -c1-200
  ;;
esac
