#!/bin/bash
# Session 11 GPU calls: `source .gpu/env.sh && bash bench/gpu/session11.sh MODE` (logs under $OUT; call 1 ran
# bench/gpu/probe11.sh). Modes in call order: pdl, pdl2, pdl3 (pallas_kernels/matvec_mgpu.py chained with and
# without programmatic dependent launch, bench/pdl_chain.py), skel, skel2, skel3, prof, skel4, skel5, skel6 (the
# persistent skeleton, bench/block_skeleton_mgpu.py, as it grew: the earlier modes' options still exist), stages
# (the Triton block kernel's pipeline depth), final (the session's GPU tests of what it added), two (two consumer
# warpgroups), ncu (Nsight Compute on the skeleton), quiet (barriers without the stream).
set -o pipefail
MODE=${1:-pdl}
OUT=${OUT:-/tmp/out}
mkdir -p $OUT
CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1"
case $MODE in
pdl)
  timeout 200 python -m pytest -q -x tests/test_kernels_matvec_mgpu.py 2>&1 | tail -5 | tee $OUT/tests.txt
  timeout 200 python -m bench.pdl_chain --blocks 8 --json $OUT/pdl.json 2>&1 | grep -v Warning | tee $OUT/pdl.txt
  XLA_FLAGS="$CB" timeout 150 python -m bench.pdl_chain --blocks 8 --json $OUT/pdl_cb.json 2>&1 | grep -v Warning | tee $OUT/pdl_cb.txt
  ;;
pdl2)
  J=$(python3 -c "import jax,os;print(os.path.dirname(jax.__file__))")
  grep -n "_pdl_effect" -B2 -A4 $J/_src/pallas/mosaic_gpu/core.py $J/_src/pallas/mosaic_gpu/lowering.py | head -60 > $OUT/src.txt
  grep -n "uses_pdl" -B3 -A12 $J/experimental/mosaic/gpu/core.py | head -60 >> $OUT/src.txt
  python - <<'PY' >> $OUT/src.txt 2>&1
import jax, jax.numpy as jnp
from pallas_kernels.matvec_mgpu import matvec_mgpu
for pdl in (True, False):
    t = jax.jit(lambda x, w: matvec_mgpu(x, w, splits=5, pdl=pdl)).lower(jnp.zeros((1, 1600), jnp.bfloat16), jnp.zeros((1600, 4800), jnp.bfloat16)).as_text()
    print("pdl", pdl, "uses_pdl in lowered text:", "uses_pdl" in t, "griddepcontrol" in t)
PY
  tail -5 $OUT/src.txt
  timeout 250 python -m bench.pdl_chain --blocks 8 --reps 7 --json $OUT/pdl.json 2>&1 | grep -v Warning | tee $OUT/pdl.txt
  XLA_FLAGS="$CB" timeout 200 python -m bench.pdl_chain --blocks 8 --reps 7 --json $OUT/pdl_cb.json 2>&1 | grep -v Warning | tee $OUT/pdl_cb.txt
  ;;
pdl3)  # the same with XLA's PDL switch on
  for F in "--xla_gpu_enable_pdl=true" "--xla_gpu_enable_pdl=true $CB"; do
    echo "XLA_FLAGS=$F"
    XLA_FLAGS="$F" timeout 200 python -m bench.pdl_chain --blocks 8 --reps 5 2>&1 | grep -v Warning
  done 2>&1 | tee $OUT/pdl3.txt
  ;;
final)  # the new kernel's GPU tests on the final tree, and the skeleton's best configuration once more
  timeout 200 python -m pytest -q -x tests/test_kernels_matvec_mgpu.py 2>&1 | tail -3 | tee $OUT/final_tests.txt
  timeout 150 python -m bench.block_skeleton_mgpu --blocks 4 --stages 16,24 --inflight 4 --modes 11111,10111,11 --reps 10 2>&1 | grep -v Warning | tee $OUT/final_skel.txt
  ;;
skel)  # the persistent four-phase skeleton (bench/block_skeleton_mgpu.py)
  timeout 240 python -m bench.block_skeleton_mgpu --blocks 8 --stages 16 --json $OUT/skel.json 2>&1 | grep -v Warning | tee $OUT/skel.txt
  ;;
skel2)  # ring depth with barriers
  timeout 240 python -m bench.block_skeleton_mgpu --blocks 8 --stages 8,16,26 --modes 10,11 --json $OUT/skel2.json 2>&1 | grep -v Warning | tee $OUT/skel2.txt
  ;;
skel3)  # what the barrier costs: x loads off, the wait off
  timeout 240 python -m bench.block_skeleton_mgpu --blocks 8 --stages 16 --modes 10,1000,1010,1001,00,0000 --json $OUT/skel3.json 2>&1 | grep -v Warning | tee $OUT/skel3.txt
  ;;
skel4)  # shallow rings: in-flight bytes set the memory latency the barriers see (Little's law)
  timeout 280 python -m bench.block_skeleton_mgpu --blocks 8 --stages 5,6,8,12 --modes 11,10,01 --json $OUT/skel4.json 2>&1 | grep -v Warning | tee $OUT/skel4.txt
  ;;
skel5)  # slots freed as each MMA retires, so shallow rings stream: the in-flight depth sweep again
  timeout 100 python -m bench.block_skeleton_mgpu --blocks 4 --stages 16 --modes 11,10 --reps 10 2>&1 | grep -v Warning | tee $OUT/skel5.txt
  timeout 330 python -m bench.block_skeleton_mgpu --blocks 4 --stages 2,3,4,8,16 --modes 11111,10111 --reps 10 --json $OUT/skel5.json 2>&1 | grep -v Warning | tee -a $OUT/skel5.txt
  ;;
skel6)  # the producer's copies in flight capped, landed tiles piling up in a deep ring
  timeout 330 python -m bench.block_skeleton_mgpu --blocks 4 --stages 16,24 --inflight 2,3,4,8 --modes 11111,10111 --reps 10 --json $OUT/skel6.json 2>&1 | grep -v Warning | tee $OUT/skel6.txt
  ;;
stages)  # the Triton block kernel's own pipeline depth (copies in flight per program), same lesson
  timeout 250 python -m bench.decode_layer --model gpt2-xl --format bf16 --quick --no-five-call --variants '[{"num_stages": 3}, {"num_stages": 2}, {}]' --out $OUT/stages.json 2>&1 | grep -v Warning | tee $OUT/stages.txt
  ;;
two)  # two consumer warpgroups taking a block's items in turn (the consumer's ~4 µs), against one
  timeout 300 python -m bench.block_skeleton_mgpu --blocks 4 --stages 10,20 --inflight 4 --consumers 1,2 --modes 11111 --reps 10 --json $OUT/two.json 2>&1 | grep -v Warning | tee $OUT/two.txt
  ;;
ncu)  # Nsight Compute on the skeleton, copies in flight uncapped and capped at 4 (bench/skeleton_once.py)
  timeout 400 ncu --kernel-name "regex:entry|mosaic" --launch-count 2 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats --page details python -m bench.skeleton_once > $OUT/ncu.txt 2>&1
  echo "ncu rc=$?"; grep -E "inflight|Duration|DRAM Throughput|Memory Throughput|L2 Hit|Stall|Warp Cycles|==PROF==|==ERROR==" $OUT/ncu.txt | head -60
  ;;
quiet)  # the barriers and x loads with no weight stream at all, against the same with the stream (queueing?)
  timeout 300 python -m bench.block_skeleton_mgpu --blocks 4 --stages 16 --inflight 0,4 --modes 000100,001100,100100,101100,00,10 --reps 10 --json $OUT/quiet.json 2>&1 | grep -v Warning | tee $OUT/quiet.txt
  ;;
prof)  # Mosaic GPU profiler traces of one skeleton call, full and without compute
  timeout 240 python -m bench.block_skeleton_mgpu --stages 16 --modes 11,10 --profile /tmp/prof 2>&1 | grep -v Warning | tee $OUT/prof.txt
  for m in 11 10; do
    f=$(ls -t /tmp/prof/m$m/* | head -1); python -m bench.trace_summary $f | tee -a $OUT/prof.txt; gzip -c $f > $OUT/trace_m$m.json.gz
  done
  ;;
esac
