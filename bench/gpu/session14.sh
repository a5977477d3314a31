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
*) echo "unknown mode $mode"; exit 2 ;;
esac
