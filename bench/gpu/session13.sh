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
q2)  # the dequantising consumer is the bottleneck (q1): two or three consumer warpgroups take a block's items in turn
  sk() { timeout 250 python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111 "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load"; }
  sk --quant none --stages 20 --inflight 4 --consumers 1,2 --json "$OUT/q2_none.json" | tee "$OUT/q2_none.txt"
  sk --quant int8,int4 --stages 30 --inflight 8 --consumers 1,2,3 --json "$OUT/q2_quant.json" | tee "$OUT/q2_quant.txt" ;;
q3)  # quantized tiles 128 deep (int8: 128-byte rows, the swizzle of jax's mixed-type matmul) vs 64, on shapes whose K
     # is a multiple of 128 x splits (gpt2-xl's with C = 1536); two consumers, full and stream-only
  SH=1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16
  sk() { timeout 150 python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111,10111 --consumers 2 --shapes $SH "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load"; }
  sk --quant none --stages 24 --inflight 4 --json "$OUT/q3_none.json" | tee "$OUT/q3_none.txt"
  sk --quant int8,int4 --qtile-k 64 --stages 36 --inflight 8 --json "$OUT/q3_k64.json" | tee "$OUT/q3_k64.txt"
  sk --quant int8,int4 --qtile-k 128 --stages 24 --inflight 4,8 --json "$OUT/q3_k128.json" | tee "$OUT/q3_k128.txt" ;;
q4)  # int8 widened before its relayout; then Nsight Compute's stall reasons for the int8 and int4 consumers
  SH=1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16
  timeout 150 python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111 --consumers 2 --shapes $SH --quant int8 \
    --qtile-k 128 --stages 24 --inflight 4 --cast-first 0,1 --json "$OUT/q4_cf.json" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load" | tee "$OUT/q4_cf.txt"
  for q in int8 int4; do
    timeout 150 ncu --kernel-name "regex:entry|mosaic" --launch-count 1 --section SpeedOfLight --section WarpStateStats --section InstructionStats \
      --section SourceCounters --page details python -m bench.skeleton_once --quant $q > "$OUT/q4_ncu_$q.txt" 2>&1
    echo "== ncu $q rc=$?"; grep -E "Duration|DRAM Throughput|Stall|Warp Cycles Per Issued|Issued Ipc|Executed Ipc|smsp__pcsamp|Warning" "$OUT/q4_ncu_$q.txt" | head -30
  done ;;
q5)  # the next tile widened while this tile's MMA is in flight (int8, int4; two consumers), and at gpt2-xl's shapes
  SH=1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16
  sk() { timeout 200 python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111 --consumers 2 "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load"; }
  sk --shapes $SH --quant none --stages 24 --inflight 4 --json "$OUT/q5_none.json" | tee "$OUT/q5_none.txt"
  sk --shapes $SH --quant int8,int4 --qtile-k 128 --stages 24 --inflight 4 --pipelined 0,1 --json "$OUT/q5_k128.json" | tee "$OUT/q5_k128.txt"
  sk --quant int4 --qtile-k 64 --stages 30 --inflight 8 --pipelined 0,1 --json "$OUT/q5_xl.json" | tee "$OUT/q5_xl.txt" ;;
q6)  # widening warpgroups: quantized tiles widened into a bf16 ring in shared memory, consumers multiply from it
  SH=1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16
  sk() { timeout 250 python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111 --shapes $SH "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load"; }
  sk --quant none --stages 24 --inflight 4 --consumers 2 --json "$OUT/q6_none.json" | tee "$OUT/q6_none.txt"
  sk --quant int8,int4 --qtile-k 128 --stages 8 --inflight 4 --consumers 1,2 --widen 1,2 --wstages 6 --json "$OUT/q6_widen.json" | tee "$OUT/q6_widen.txt"
  sk --quant int8 --qtile-k 128 --stages 24 --inflight 4 --consumers 2 --json "$OUT/q6_int8.json" | tee "$OUT/q6_int8.txt" ;;
q7)  # CUDA-core consumers (no wgmma, B = 1) against the widening warpgroups and the stream alone, one run
  SH=1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16
  sk() { timeout 250 python -m bench.block_skeleton_mgpu --blocks 4 --shapes $SH "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load"; }
  sk --quant none --modes 11111 --stages 24 --inflight 4 --consumers 2 --json "$OUT/q7_none.json" | tee "$OUT/q7_none.txt"
  sk --quant int8,int4 --modes 11111,10111 --qtile-k 128 --stages 18 --inflight 4 --consumers 1,2 --matvec 1 --json "$OUT/q7_matvec.json" | tee "$OUT/q7_matvec.txt"
  sk --quant int8,int4 --modes 11111 --qtile-k 128 --stages 8 --inflight 4 --consumers 2 --widen 2 --wstages 6 --json "$OUT/q7_widen.json" | tee "$OUT/q7_widen.txt" ;;
q8)  # the item's scales: read after the product (latency exposed), before it, or not at all (diagnostic)
  SH=1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16
  sk() { timeout 250 python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111 --shapes $SH --qtile-k 128 --inflight 4 --consumers 2 "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|Deprecation\|plgpu.load"; }
  sk --quant none --stages 24 --json "$OUT/q8_none.json" | tee "$OUT/q8_none.txt"
  sk --quant int8,int4 --stages 8 --widen 2 --wstages 6 --scale-at end,start,none --json "$OUT/q8_widen.json" | tee "$OUT/q8_widen.txt"
  sk --quant int8,int4 --stages 24 --scale-at end,none --json "$OUT/q8_rega.json" | tee "$OUT/q8_rega.txt" ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
