#!/usr/bin/env bash
# Session 14's GPU calls, one mode each:  source .gpu/env.sh && bash bench/gpu/session14.sh MODE
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
mode=${1:-r1}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader | head -1
SH=1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16
sk() { timeout 280 python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111 --shapes $SH --qtile-k 128 --inflight 4 "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load"; }
case "$mode" in
r1)  # the wideners store the widened tile in its load layout (no relayout to WGMMA) vs session 13's best (q8)
  sk --quant none --stages 24 --consumers 2 --json "$OUT/r1_none.json" | tee "$OUT/r1_none.txt"
  sk --quant int8,int4 --stages 8 --widen 1,2 --wstages 6 --direct 0,1 --consumers 2 --scale-at start \
    --json "$OUT/r1_widen.json" | tee "$OUT/r1_widen.txt" ;;
r2)  # issue 10's table in one run (bf16, int8, int4, int8 with the int8 LM head); the skeleton's latency floor: five
     # gpt2-xl phases (the fifth a stand-in for attention's barrier and activation round trip), no weight stream
  timeout 300 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
    --quantize none,int8,int4,int8+head --out "$OUT/r2_decode_quant.json" > "$OUT/r2_decode_quant.txt" 2>&1
  echo "== decode quant rc=$?"; sed -n '/^decode,/,/^jaxgpt:/p' "$OUT/r2_decode_quant.txt" | cut -c1-160
  timeout 200 python -m bench.block_skeleton_mgpu --blocks 4 --stages 16 --reps 20 \
    --shapes 1600:4800:5,1600:1600:5,1600:1600:5,1600:6400:5,6400:1600:20 --modes 101110,100110,001110,000110 \
    --json "$OUT/r2_quiet5.json" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load" | tee "$OUT/r2_quiet5.txt" ;;
r3)  # the quantized per-op step with its split-K partials finished by the next kernel (JAXGPT_FUSED_QUANT=1; session 5
     # measured it slower) against the default (int4 per-op with XLA epilogues; int8 on the block kernel), one machine
  d() { timeout 200 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 "$@"; }
  d --quantize none,int4,int8 --out "$OUT/r3_default.json" > "$OUT/r3_default.txt" 2>&1; echo "== default rc=$?"
  JAXGPT_FUSED_QUANT=1 d --quantize int4 --out "$OUT/r3_fused_int4.json" > "$OUT/r3_fused_int4.txt" 2>&1; echo "== fused int4 rc=$?"
  JAXGPT_FUSED_QUANT=1 JAXGPT_DECODE_LAYER_INT8=0 d --quantize int8,none --out "$OUT/r3_fused_int8.json" \
    > "$OUT/r3_fused_int8.txt" 2>&1; echo "== fused int8 per-op rc=$?"
  for f in default fused_int4 fused_int8; do sed -n '/^model /,/^jaxgpt:/p' "$OUT/r3_$f.txt" | grep -v "^jaxgpt:\|^model"; done
  for f in fused_int4 fused_int8; do grep -A12 "loop's kernels" "$OUT/r3_$f.txt" | head -14; done ;;
r4)  # the int8 head inside the fused ln_f + head kernel (needs b57227c's code, reverted after this call): GPU tests,
     # the head alone (bf16 vs int8, tiles), decode
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_kernels_lm_head.py \
    "tests/test_kernels_decode_layer.py::test_int8_model_decode_on_block_kernels_matches_xla" > "$OUT/r4_tests.txt" 2>&1
  echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|error" "$OUT/r4_tests.txt" | tail -5
  timeout 150 python -m bench.lm_head --model gpt2-xl,gpt2 --batch 1 --head bf16,int8 --plans \
    '[{}, {"block_k": 256}, {"block_n": 64, "block_k": 256}, {"block_n": 256, "block_k": 64}, {"block_k": 256, "num_stages": 3}]' \
    --out "$OUT/r4_lm_head.json" > "$OUT/r4_lm_head.txt" 2>&1
  echo "== lm_head rc=$?"; sed -n '/^ln_f + LM head/,$p' "$OUT/r4_lm_head.txt"
  timeout 200 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
    --quantize none,int8,int8+head --out "$OUT/r4_decode.json" > "$OUT/r4_decode.txt" 2>&1
  echo "== decode rc=$?"; sed -n '/^model /,/^jaxgpt:/p' "$OUT/r4_decode.txt" | grep -v "^jaxgpt:"
  grep -A4 "int8+head: the decode loop" "$OUT/r4_decode.txt" ;;
r5)  # the best quantized skeleton (two wideners storing in the load layout, two consumers) at gpt2-xl's real shapes
     # (K = 1600: 64-deep tiles, 5 a split) against bf16, with the stream alone for each format
  xl() { timeout 250 python -m bench.block_skeleton_mgpu --blocks 4 --inflight 4 --consumers 2 "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load"; }
  xl --quant none --stages 20 --modes 11111,10111 --json "$OUT/r5_none.json" | tee "$OUT/r5_none.txt"
  xl --quant int8,int4 --qtile-k 64 --stages 10 --modes 10111 --json "$OUT/r5_stream.json" | tee "$OUT/r5_stream.txt"
  xl --quant int8,int4 --qtile-k 64 --stages 10 --modes 11111 --widen 2 --wstages 10 --direct 0,1 --scale-at start \
    --json "$OUT/r5_widen.json" | tee "$OUT/r5_widen.txt" ;;
r6)  # the int8 head held (V, C) like wte, in the fused ln_f + head kernel: GPU tests, the head alone, decode
  timeout 220 python -m pytest -q -p no:cacheprovider tests/test_kernels_lm_head.py tests/test_quantize.py \
    "tests/test_kernels_decode_layer.py::test_int8_model_decode_on_block_kernels_matches_xla" > "$OUT/r6_tests.txt" 2>&1
  echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|error" "$OUT/r6_tests.txt" | tail -5
  timeout 120 python -m bench.lm_head --model gpt2-xl,gpt2 --batch 1 --head bf16,int8 --plans \
    '[{}, {"block_k": 256}, {"block_n": 64, "block_k": 256}]' --out "$OUT/r6_lm_head.json" > "$OUT/r6_lm_head.txt" 2>&1
  echo "== lm_head rc=$?"; sed -n '/^ln_f + LM head/,$p' "$OUT/r6_lm_head.txt"
  timeout 240 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
    --quantize none,int8,int8+head,int4,int4+head --out "$OUT/r6_decode.json" > "$OUT/r6_decode.txt" 2>&1
  echo "== decode rc=$?"; sed -n '/^model /,/^jaxgpt:/p' "$OUT/r6_decode.txt" | grep -v "^jaxgpt:"
  grep -A3 "+head: the decode loop" "$OUT/r6_decode.txt" ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
