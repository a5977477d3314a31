#!/usr/bin/env bash
# Session 13's GPU calls, one mode each:  source .gpu/env.sh && bash bench/gpu/session13.sh MODE
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
mode=${1:-q1}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader | head -1
case "$mode" in
q1)  # the persistent skeleton's four gpt2-xl projections: bf16 vs int8 vs int4 weights (dequantised in registers)
  sk() { timeout 200 python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111,10111 "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000"; }
  sk --quant none --stages 16 --inflight 4 --json "$OUT/q1_none.json" | tee "$OUT/q1_none.txt"
  sk --quant int8 --stages 16,32 --inflight 4,8 --json "$OUT/q1_int8.json" | tee "$OUT/q1_int8.txt"
  sk --quant int4 --stages 32 --inflight 8,16 --json "$OUT/q1_int4.json" | tee "$OUT/q1_int4.txt" ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
