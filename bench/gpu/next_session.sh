#!/usr/bin/env bash
# A baseline for the next session, as one command of under 10 minutes (everything on the model's path has run on
# the H100 as of session 12: its calls 9-11 tested and timed the final tree, the fused ln_f + LM head, the first
# block without partials and the static greedy loop; `bash bench/gpu/session12.sh table` is its decode table, with
# the loop's own kernel time; session 11's Mosaic GPU skeleton's baseline is `bash bench/gpu/session11.sh final`, and
# session 13's quantized skeleton (bf16 / int8 / int4, widening warpgroups, scales early) is `session13.sh q8`, and
# session 14's, at gpt2-xl's own shapes with the wideners storing in the load layout, `session14.sh r5`):
#   source .gpu/env.sh && bash bench/gpu/next_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 150 python -m bench.launch_barrier --out "$OUT/launch_barrier.json" > "$OUT/launch_barrier.txt" 2>&1
echo "== launch_barrier rc=$?"; grep -E " (0|1|4) barriers" "$OUT/launch_barrier.txt"
for m in gpt2-xl gpt2; do
  timeout 150 python -m bench.decode_layer --model $m --quick --no-five-call --variants '[{"prefetch_rows": 0}]' \
    --out "$OUT/chain_$m.json" > "$OUT/chain_$m.txt" 2>&1; echo "== chain $m rc=$?"
  grep -E "^all|^no phase|^only" "$OUT/chain_$m.txt" | cut -c1-110
done
timeout 200 python -m bench.decode --model gpt2,gpt2-xl --backend xla,pallas --batch 1 --tokens 256 --reps 3 \
  --out "$OUT/decode.json" > "$OUT/decode.txt" 2>&1
echo "== decode rc=$?"; grep -A5 "^model" "$OUT/decode.txt" | cut -c1-130
