#!/usr/bin/env bash
# Session 12's GPU calls, one mode each:  source .gpu/env.sh && bash bench/gpu/session12.sh MODE
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
mode=${1:-base}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader | head -1
case "$mode" in
base)  # same-machine baseline: decode with the step's kernel breakdown
  timeout 300 python -m bench.decode --model gpt2-xl,gpt2 --backend pallas --batch 1 --tokens 256 --reps 3 \
    --breakdown 14 --out "$OUT/decode.json" > "$OUT/decode.txt" 2>&1
  echo "== decode rc=$?"; sed -n '/^decode,/,$p' "$OUT/decode.txt" | cut -c1-140 ;;
gap)  # wall clock against the loop's own kernel time, under loop and XLA settings (gpt2-xl B1)
  for v in "default" "JAXGPT_COMMAND_BUFFERS=0" "JAXGPT_DECODE_CHUNK=64"; do
    tag=${v//[^A-Za-z0-9]/_}
    env $( [ "$v" = default ] || echo "$v" ) timeout 150 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 \
      --tokens 256 --reps 3 --out "$OUT/gap_$tag.json" > "$OUT/gap_$tag.txt" 2>&1
    echo "== $v rc=$?"; grep -E "^gpt2-xl +1|decode loop" "$OUT/gap_$tag.txt" | cut -c1-140
    grep -A6 "decode loop" "$OUT/gap_$tag.txt" | tail -6 | cut -c1-120
  done ;;
head)  # ln_f + LM head: two kernels vs lm_head_decode plans; then decode with the fused head on / off
  timeout 200 python -m pytest -q -x tests/test_kernels_lm_head.py > "$OUT/head_tests.txt" 2>&1
  echo "== head tests rc=$?"; tail -2 "$OUT/head_tests.txt"
  timeout 200 python -m bench.lm_head --model gpt2,gpt2-xl --batch 1 --out "$OUT/lm_head.json" > "$OUT/lm_head.txt" 2>&1
  echo "== bench.lm_head rc=$?"; sed -n '/^ln_f + LM head/,$p' "$OUT/lm_head.txt" | cut -c1-130
  for fh in 1 0; do
    JAXGPT_FUSED_HEAD=$fh timeout 150 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 \
      --reps 3 --out "$OUT/decode_fh$fh.json" > "$OUT/decode_fh$fh.txt" 2>&1
    echo "== decode fused_head=$fh rc=$?"; grep -E "^gpt2-xl +1" "$OUT/decode_fh$fh.txt" | cut -c1-140
    grep -A17 "decode loop" "$OUT/decode_fh$fh.txt" | cut -c1-120
  done ;;
sampler)  # greedy decided statically vs lax.cond on the device each step; both models, 5 reps
  timeout 280 python -m bench.decode --model gpt2-xl,gpt2 --backend pallas --batch 1 --tokens 256 --reps 5 \
    --sampler static,cond,static --out "$OUT/decode_sampler.json" > "$OUT/decode_sampler.txt" 2>&1
  echo "== decode rc=$?"; grep -E "^gpt2(-xl)? +1|decode loop" "$OUT/decode_sampler.txt" | cut -c1-140 ;;
final1)  # GPU tests of the head kernel and the first block without partials; head plans; decode (static greedy)
  timeout 150 python -m pytest -q -x tests/test_kernels_lm_head.py tests/test_kernels_decode_layer.py \
    -k "lm_head or first_block or model_decode or (matches_reference and scratch)" > "$OUT/tests.txt" 2>&1
  echo "== tests rc=$?"; grep -E "passed|failed" "$OUT/tests.txt" | tail -2
  timeout 150 python -m bench.lm_head --model gpt2-xl,gpt2 --batch 1 --out "$OUT/lm_head.json" > "$OUT/lm_head.txt" 2>&1
  echo "== bench.lm_head rc=$?"; sed -n '/^ln_f + LM head/,$p' "$OUT/lm_head.txt" | cut -c1-130
  timeout 200 python -m bench.decode --model gpt2-xl,gpt2 --backend pallas --batch 1 --tokens 256 --reps 5 \
    --out "$OUT/decode.json" > "$OUT/decode.txt" 2>&1
  echo "== decode rc=$?"; grep -E "^gpt2(-xl)? +1" "$OUT/decode.txt" | cut -c1-140
  grep -A13 "decode loop" "$OUT/decode.txt" | cut -c1-110 ;;
unroll)  # head tiles; decode with 1, 2, 4 steps unrolled a loop iteration (gpt2-xl, static greedy)
  timeout 100 python -m bench.lm_head --model gpt2-xl,gpt2 --batch 1 --out "$OUT/lm_head.json" > "$OUT/lm_head.txt" 2>&1
  echo "== bench.lm_head rc=$?"; sed -n '/^ln_f + LM head/,$p' "$OUT/lm_head.txt" | cut -c1-130
  for u in 1 4 2; do
    JAXGPT_DECODE_UNROLL=$u timeout 130 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 \
      --reps 5 --out "$OUT/decode_u$u.json" > "$OUT/decode_u$u.txt" 2>&1
    echo "== decode unroll=$u rc=$?"; grep -E "^gpt2-xl +1|decode loop" "$OUT/decode_u$u.txt" | cut -c1-140
    grep -A6 "decode loop" "$OUT/decode_u$u.txt" | grep -E "while|reduce" | cut -c1-100
  done ;;
tests)  # the final tree's GPU tests: block kernel (first block without partials, pos clamped inside), head, generate,
  # full-size parity with command buffers
  timeout 170 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
    -k "first_block or model_decode or chained or int8_weights or (matches_reference and (scratch or one-split))" \
    > "$OUT/tests_block.txt" 2>&1
  echo "== block tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/tests_block.txt" | cut -c1-160 | tail -3
  timeout 120 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_lm_head.py tests/test_sampling.py \
    tests/test_generate.py > "$OUT/tests_head_generate.txt" 2>&1
  echo "== head/sampling/generate tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/tests_head_generate.txt" | tail -3
  XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1" \
    timeout 200 python -m pytest -q -x -s -p no:cacheprovider tests/test_pallas_backend.py -k "full_size" \
    > "$OUT/parity.txt" 2>&1
  echo "== full-size parity, command buffers on, rc=$?"; grep -E "^gpt2|passed|failed" "$OUT/parity.txt" | cut -c1-160 ;;
table)  # sampling/generate GPU tests; issue 7 / 10 tables: B=1 XLA vs Pallas (gpt2, gpt2-xl), gpt2-xl int8 / int4
  timeout 100 python -m pytest -q -x -p no:cacheprovider tests/test_sampling.py tests/test_generate.py \
    > "$OUT/tests_generate.txt" 2>&1
  echo "== sampling/generate tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/tests_generate.txt" | tail -3
  timeout 260 python -m bench.decode --model gpt2-xl,gpt2 --backend pallas,xla --batch 1 --tokens 256 --reps 3 \
    --out "$OUT/decode_b1.json" > "$OUT/decode_b1.txt" 2>&1
  echo "== decode B1 rc=$?"; sed -n '/^decode,/,/^jaxgpt:/p' "$OUT/decode_b1.txt" | cut -c1-140
  timeout 170 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
    --quantize none,int8,int4 --out "$OUT/decode_quant.json" > "$OUT/decode_quant.txt" 2>&1
  echo "== decode quant rc=$?"; sed -n '/^decode,/,/^jaxgpt:/p' "$OUT/decode_quant.txt" | cut -c1-140 ;;
last)  # generate tests on the GPU (cut by call 10's limit); B=8 table; gpt2-xl B=1 once more on this machine
  timeout 180 python -m pytest -q -x -p no:cacheprovider tests/test_generate.py > "$OUT/tests_generate.txt" 2>&1
  echo "== generate tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/tests_generate.txt" | tail -3
  timeout 100 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 5 \
    --out "$OUT/decode_xl_b1.json" > "$OUT/decode_xl_b1.txt" 2>&1
  echo "== decode xl B1 rc=$?"; grep -E "^gpt2-xl +1" "$OUT/decode_xl_b1.txt" | cut -c1-140
  timeout 260 python -m bench.decode --model gpt2,gpt2-xl --backend pallas,xla --batch 8 --tokens 256 --reps 3 \
    --out "$OUT/decode_b8.json" > "$OUT/decode_b8.txt" 2>&1
  echo "== decode B8 rc=$?"; grep -E "^gpt2(-xl)? +8" "$OUT/decode_b8.txt" | cut -c1-140 ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
