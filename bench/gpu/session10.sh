#!/usr/bin/env bash
# Session 10's GPU calls, one mode a call (each under 10 minutes): source .gpu/env.sh && bash bench/gpu/session10.sh MODE
# On the tree as left only `final`'s tests and decode run as they did: its sink_late rows and the other modes timed
# knobs measured and removed in this session (the commits that have them: sink_late 46e0ffd, flow a22f35f, idle
# 9bcc928, att 59ecd06, warps 3b935a8, preload e42e37f; bench/NOTES.md, session 10).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
chain() {  # $1 model, $2 format, $3 variants JSON, $4 tag, $5 timeout
  timeout ${5:-200} python -m bench.decode_layer --model $1 --format $2 --quick --no-five-call --variants "$3" \
    --out "$OUT/chain_$4.json" > "$OUT/chain_$4.txt" 2>&1
  echo "== chain $4 rc=$?"; grep -E "^all|^no phase|^only|failed" "$OUT/chain_$4.txt" | cut -c1-150
}
case "${1:-}" in
  flow)  # call 1: dependency counters instead of the barriers before attention, attn.c_proj and the MLP output
    # (DecodeLayerPlan.flow_phases), GPU tests of the one-kernel form with them; int8 tiles as the dot's first operand
    timeout 170 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "(flow or swap) and True" > "$OUT/tests.txt" 2>&1
    echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal|Timeout" "$OUT/tests.txt" | cut -c1-160 | tail -4
    chain gpt2-xl bf16 '[{"flow_phases": [2]}, {"flow_phases": [4]}, {"flow_phases": [1]},
      {"flow_phases": [1, 2, 4]}, {}]' xl 200
    chain gpt2-xl int8 '[{"swap_ab": true}, {"flow_phases": [1, 2, 4]}]' xl_int8 120
    chain gpt2 bf16 '[{"flow_phases": [1, 2, 4]}, {}]' gpt2 90 ;;
  idle)  # call 2: programs without an item stream the next phase's (or the next block's c_attn) weights into L2
    # (idle_rows, idle_phases); fewer MLP-output / attn.c_proj partials (the next prologue sums them); GPU tests
    timeout 100 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "idle and True" > "$OUT/tests.txt" 2>&1
    echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal|Timeout" "$OUT/tests.txt" | cut -c1-160 | tail -4
    chain gpt2-xl bf16 '[{"idle_rows": 64}, {"idle_rows": 256}, {"idle_rows": 2048},
      {"idle_rows": 256, "idle_phases": [2, 3, 4]}, {"idle_rows": 2048, "idle_phases": [0, 1, 2, 3, 4]},
      {"out": [64, 128, 4]}, {"out": [32, 128, 2]}, {"proj": [64, 2]}, {}]' xl 260
    chain gpt2-xl int8 '[{"idle_rows": 256}, {"idle_rows": 2048, "idle_phases": [0, 1, 2, 3, 4]}]' xl_int8 100
    chain gpt2 bf16 '[{"idle_rows": 256}, {"idle_rows": 2048, "idle_phases": [0, 1, 2, 3, 4]}]' gpt2 90 ;;
  att)  # call 3: the attention phase's first key/value block loaded whole during the barrier (att_preload); one
    # split a head written straight to the attention output (no count, no merge); GPU tests, decode_attention's too
    timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      tests/test_kernels_decode_attention.py -k "(preload or one-split) and True or decode_attention" \
      > "$OUT/tests.txt" 2>&1
    echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal|Timeout" "$OUT/tests.txt" | cut -c1-160 | tail -4
    chain gpt2-xl bf16 '[{"att_preload": true}, {"att_splits": 1}, {"att_splits": 1, "att_preload": true},
      {"att_splits": 1, "att_block": 128, "att_preload": true}, {"att_splits": 2, "att_preload": true},
      {"att_splits": 3, "att_preload": true}, {}]' xl 200
    timeout 100 python -m bench.decode_layer --model gpt2-xl --cache 288 --quick --no-five-call --variants \
      '[{"att_preload": true}, {"att_splits": 1, "att_preload": true}, {"att_splits": 2, "att_preload": true}, {}]' \
      --out "$OUT/chain_xl288.json" > "$OUT/chain_xl288.txt" 2>&1
    echo "== chain xl cache 288 rc=$?"; grep -E "^all|failed" "$OUT/chain_xl288.txt" | cut -c1-150
    chain gpt2 bf16 '[{"att_preload": true}, {"att_splits": 1, "att_preload": true},
      {"att_splits": 2, "att_preload": true}, {}]' gpt2 90 ;;
  late)  # call 4: prefetched sectors consumed after the phase's items (sink_late), so deeper prefetches do not
    # stall the first K step; GPU tests
    timeout 90 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "sink-late and True" > "$OUT/tests.txt" 2>&1
    echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal|Timeout" "$OUT/tests.txt" | cut -c1-160 | tail -4
    chain gpt2-xl bf16 '[{"sink_late": true}, {"sink_late": true, "prefetch_rows": 128},
      {"sink_late": true, "prefetch_rows": 256}, {"sink_late": true, "prefetch_rows": 512}, {"prefetch_rows": 128},
      {"sink_late": true, "prefetch_rows": 256, "att_preload": true}, {}]' xl 230
    chain gpt2 bf16 '[{"sink_late": true, "prefetch_rows": 128}, {"sink_late": true, "prefetch_rows": 256}, {}]' \
      gpt2 90 ;;
  final)  # call 5: GPU tests of the one-split attention path and sink_late; sink_late against the plan, twice
    # each, one run; issue 7's and 10's decode table (gpt2-xl and gpt2, B=1, bf16 / int8 / int4)
    timeout 80 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "(one-split or sink-late) and True" > "$OUT/tests.txt" 2>&1
    echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal|Timeout" "$OUT/tests.txt" | cut -c1-160 | tail -4
    chain gpt2-xl bf16 '[{"sink_late": true}, {}, {"sink_late": true}, {}]' xl 120
    timeout 300 python -m bench.decode --model gpt2-xl,gpt2 --backend pallas --batch 1 --tokens 256 --reps 3 \
      --quantize none,int8,int4 --out "$OUT/decode.json" > "$OUT/decode.txt" 2>&1
    echo "== decode rc=$?"; grep -E "^gpt2" "$OUT/decode.txt" | cut -c1-120 ;;
  warps)  # call 6: 16 warps a program against 8; the first block's kernel given as many (zero) partials as the
    # others' (JAXGPT_FIRST_PARTS=plan: the same compiled kernel), decode A/B with the step's top kernels
    chain gpt2-xl bf16 '[{"num_warps": 16}, {}, {"num_warps": 16}, {}]' xl 150
    for fp in plan one plan one; do
      JAXGPT_FIRST_PARTS=$fp timeout 80 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 \
        --tokens 256 --reps 3 --breakdown 3 --out "$OUT/decode_$fp.json" > "$OUT/decode_$fp.txt" 2>&1
      echo "== decode first parts $fp rc=$?"; grep -E "^gpt2|^ +[0-9.]+ +jaxgpt_decode_layer" "$OUT/decode_$fp.txt" \
        | cut -c1-110
    done ;;
  preload)  # call 7: the first K steps' weight tiles of each matmul phase loaded whole into registers during the
    # barrier (preload_tiles), GPU tests; decode with the heuristic's plan patched to preload 2 tiles, against it
    timeout 90 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "preload and True" > "$OUT/tests.txt" 2>&1
    echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal|Timeout" "$OUT/tests.txt" | cut -c1-160 | tail -4
    chain gpt2-xl bf16 '[{"preload_tiles": 1}, {"preload_tiles": 2}, {"preload_tiles": 3}, {}, {"preload_tiles": 2}]' xl 150
    chain gpt2-xl int8 '[{"preload_tiles": 2}, {}]' xl_int8 80
    chain gpt2 bf16 '[{"preload_tiles": 2}, {}]' gpt2 70
    for pt in 2 0; do
      timeout 75 python -c "
import dataclasses, sys
import pallas_kernels.decode_layer as m
h = m.DecodeLayerPlan.heuristic
m.DecodeLayerPlan.heuristic = staticmethod(lambda *a, **k: dataclasses.replace(h(*a, **k), preload_tiles=$pt))
from bench.decode import main
sys.exit(main(['--model', 'gpt2-xl', '--backend', 'pallas', '--batch', '1', '--tokens', '256', '--reps', '3',
               '--out', '$OUT/decode_pre$pt.json']))" > "$OUT/decode_pre$pt.txt" 2>&1
      echo "== decode preload_tiles=$pt rc=$?"; grep -E "^gpt2" "$OUT/decode_pre$pt.txt" | cut -c1-110
    done ;;
  *) echo "unknown mode ${1:-}"; exit 2 ;;
esac
