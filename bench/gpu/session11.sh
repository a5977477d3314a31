#!/bin/bash
# Session 11 GPU calls: `source .gpu/env.sh && bash bench/gpu/session11.sh MODE` (logs under $OUT).
# pdl: the Mosaic GPU decode projections (pallas_kernels/matvec_mgpu.py) chained with and without programmatic
#      dependent launch, default XLA flags and command buffers (bench/pdl_chain.py).
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
esac
