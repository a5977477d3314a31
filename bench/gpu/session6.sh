#!/usr/bin/env bash
# Session 6's GPU calls, one mode a call:  source .gpu/env.sh && bash bench/gpu/session6.sh MODE
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
mode=${1:?mode}
case $mode in
  knobs)  # block-kernel knobs: early weight tiles, volatile barrier poll, first-tile reuse (xl and gpt2, B=1)
    V='[{"reuse_rows": false}, {"poll_volatile": true}, {"early_kb": 32}, {"early_kb": 64}, {"early_kb": 128},
        {"early_kb": 64, "poll_volatile": true}]'
    timeout 200 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "matches_reference and (early or scratch)" > "$OUT/knob_tests.txt" 2>&1
    echo "== knob tests rc=$?"; tail -1 "$OUT/knob_tests.txt" | cut -c1-200
    for m in gpt2-xl gpt2; do
      timeout 170 python -m bench.decode_layer --model $m --quick --variants "$V" --out "$OUT/layer_$m.json" \
        > "$OUT/layer_$m.txt" 2>&1; echo "== $m rc=$?"
      grep -v "five-call" "$OUT/layer_$m.txt" | cut -c1-110
    done ;;
  chain)  # the same, HBM-bound: 8 distinct blocks chained; barrier poll, stages, and the per-phase tile sweep (xl)
    V='[{"poll_volatile": false}, {"num_stages": 3}, {"num_stages": 5}, {"num_stages": 6}, {"reuse_rows": false}]'
    timeout 520 python -m bench.decode_layer --model gpt2-xl --variants "$V" --out "$OUT/chain_xl.json" \
      > "$OUT/chain_xl.txt" 2>&1; echo "== gpt2-xl rc=$?"
    grep -v "five-call" "$OUT/chain_xl.txt" | cut -c1-110 ;;
  merge)  # live-range attention splits + last-split head merge: GPU tests, the chain bench, the model's decode
    timeout 200 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      > "$OUT/merge_tests.txt" 2>&1
    echo "== decode_layer tests rc=$?"; tail -1 "$OUT/merge_tests.txt" | cut -c1-200
    V='[{"merge_heads": false, "live_splits": false, "att_splits": 2}, {"merge_heads": false}, {"live_splits": false},
        {"att_splits": 3}, {"att_splits": 8}]'
    timeout 170 python -m bench.decode_layer --model gpt2-xl --quick --variants "$V" --out "$OUT/merge_xl.json" \
      > "$OUT/merge_xl.txt" 2>&1; echo "== gpt2-xl rc=$?"
    grep -v "five-call" "$OUT/merge_xl.txt" | cut -c1-110
    timeout 150 python -m bench.decode --model gpt2-xl,gpt2 --backend pallas --batch 1 --tokens 256 --reps 3 \
      --out "$OUT/decode_merge.json" > "$OUT/decode_merge.txt" 2>&1
    echo "== decode rc=$?"; grep -A3 "^model" "$OUT/decode_merge.txt" | cut -c1-130 ;;
  fix)  # the fused form's failure in call 4: every flag in both forms, the barrier's PTX, parity, decode
    timeout 240 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py -k "not model" \
      > "$OUT/fix_tests.txt" 2>&1
    echo "== decode_layer tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/fix_tests.txt" | cut -c1-160 | tail -12
    rm -rf /tmp/dump; XLA_FLAGS=--xla_dump_to=/tmp/dump timeout 60 python -m pytest -q -p no:cacheprovider \
      "tests/test_kernels_decode_layer.py::test_decode_layer_matches_reference[1-128-2-40-5-scratch-float32-True]" \
      > /dev/null 2>&1
    echo "== PTX of the fused kernel: atomics"; cat /tmp/dump/*.ptx 2>/dev/null | grep -oE "(atom|red|ld\.volatile|ld\.acquire)[.a-z0-9]*" | sort | uniq -c
    JAXGPT_DECODE_LAYER=1 timeout 120 python -m pytest -q -x -p no:cacheprovider tests/test_pallas_backend.py \
      -k "full_size or decode" > "$OUT/fix_parity.txt" 2>&1
    echo "== full-size parity + decode tests, block kernel forced rc=$?"; tail -1 "$OUT/fix_parity.txt" | cut -c1-200
    timeout 150 python -m bench.decode --model gpt2-xl,gpt2 --backend pallas --batch 1 --tokens 256 --reps 3 \
      --out "$OUT/decode_fix.json" > "$OUT/decode_fix.txt" 2>&1
    echo "== decode rc=$?"; grep -A3 "^model" "$OUT/decode_fix.txt" | cut -c1-130 ;;
  stream)  # stream-K matmul phases: GPU tests (both forms), the chain bench's variants (xl, gpt2)
    timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "stream or free_choices or parts" > "$OUT/stream_tests.txt" 2>&1
    echo "== stream-K tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/stream_tests.txt" | cut -c1-160 | tail -6
    V='[{"qkv": [128, 64, 0], "fc": [128, 64, 0], "out": [128, 128, 0]},
        {"qkv": [128, 64, 0], "fc": [128, 64, 0], "out": [128, 64, 0]},
        {"qkv": [128, 128, 0], "fc": [128, 128, 0], "out": [128, 128, 0]},
        {"qkv": [128, 64, 0]}, {"fc": [128, 64, 0]}, {"out": [128, 128, 0]}, {"out": [64, 128, 0]}]'
    for m in gpt2-xl gpt2; do
      timeout 190 python -m bench.decode_layer --model $m --quick --variants "$V" --out "$OUT/stream_$m.json" \
        > "$OUT/stream_$m.txt" 2>&1; echo "== $m rc=$?"
      grep -v "five-call" "$OUT/stream_$m.txt" | grep -v "^only" | cut -c1-120
    done ;;
  sweep)  # plan knobs around the merged-heads plan (xl, gpt2 B=1), and xl B=8's block
    V='[{"num_warps": 4}, {"att_splits": 4}, {"att_splits": 6}, {"proj": [128, 4]}, {"proj": [64, 2]},
        {"proj": [64, 8]}, {"att_block": 32}]'
    for m in gpt2-xl gpt2; do
      timeout 170 python -m bench.decode_layer --model $m --quick --variants "$V" --out "$OUT/sweep_$m.json" \
        > "$OUT/sweep_$m.txt" 2>&1; echo "== $m rc=$?"
      grep -v "five-call" "$OUT/sweep_$m.txt" | grep -v "^only" | cut -c1-120
    done
    timeout 120 python -m bench.decode_layer --model gpt2-xl --batch 8 --quick --variants '[]' \
      --out "$OUT/sweep_xl_b8.json" > "$OUT/sweep_xl_b8.txt" 2>&1; echo "== xl B8 rc=$?"
    grep -v "five-call" "$OUT/sweep_xl_b8.txt" | cut -c1-120 ;;
  final)  # the closing state: block-kernel tests (GPU), then issue 7's and issue 10's decode tables, one run each
    timeout 100 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "(matches_reference and scratch) or free_choices or chained or int8" > "$OUT/final_tests.txt" 2>&1
    echo "== decode_layer tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/final_tests.txt" | cut -c1-160 | tail -4
    timeout 250 python -m bench.decode --model gpt2,gpt2-xl --backend xla,pallas --batch 1,8 --tokens 256 --reps 3 \
      --out "$OUT/final_decode.json" > "$OUT/final_decode.txt" 2>&1
    echo "== decode bf16 rc=$?"; grep -A10 "^model" "$OUT/final_decode.txt" | cut -c1-130
    timeout 150 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
      --quantize none,int8,int4 --out "$OUT/final_quant.json" > "$OUT/final_quant.txt" 2>&1
    echo "== decode quant rc=$?"; grep -A5 "^model" "$OUT/final_quant.txt" | cut -c1-130 ;;
  chunk)  # the decode loop: 16 steps a while-loop iteration vs one (JAXGPT_DECODE_CHUNK), gpt2 and gpt2-xl B=1
    for c in 1 16; do
      JAXGPT_DECODE_CHUNK=$c timeout 170 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 \
        --tokens 256 --reps 3 --out "$OUT/chunk$c.json" > "$OUT/chunk$c.txt" 2>&1
      echo "== JAXGPT_DECODE_CHUNK=$c rc=$?"; grep -A3 "^model" "$OUT/chunk$c.txt" | cut -c1-130
    done ;;
  *) echo "unknown mode $mode"; exit 2 ;;
esac
