#!/usr/bin/env bash
# What the GPU has not yet measured after session 6, as one command of under 10 minutes:
#   source .gpu/env.sh && bash bench/gpu/next_session.sh
# The barrier's two polls re-timed with the mended acquire (session 6 timed volatile polling only before the fix),
# on the HBM-bound chain of 8 gpt2-xl and gpt2 blocks, then the model's decode with each (B=1).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for m in gpt2-xl gpt2; do
  timeout 150 python -m bench.decode_layer --model $m --quick --variants '[{"poll_volatile": false}]' \
    --out "$OUT/poll_$m.json" > "$OUT/poll_$m.txt" 2>&1; echo "== $m rc=$?"
  grep -E "^all|^no phase" "$OUT/poll_$m.txt" | cut -c1-110
done
