#!/usr/bin/env bash
# Session 7's GPU calls, one mode a call (each under 10 minutes): source .gpu/env.sh && bash bench/gpu/session7.sh MODE
# Modes scalar and barrier ran code since removed (the dataflow plan, the fence/flag barriers: commits a2bc0a9 and
# 57d5918 have it); they stay as the record of calls 2-4 and do nothing useful on later trees.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
chain() {  # $1 model, $2 tag, $3 variants JSON: the HBM-bound chain bench of the block kernel
  timeout 150 python -m bench.decode_layer --model "$1" --quick --variants "$3" --out "$OUT/$2_$1.json" \
    > "$OUT/$2_$1.txt" 2>&1; echo "== chain $1 rc=$?"
  grep -E "^all|^no phase" "$OUT/$2_$1.txt" | cut -c1-120
}
case "${1:-}" in
  scalar)  # call 2: launch vs barrier cost; dataflow with scalar waits (call 1: the vector waits segfaulted
    # Triton's compiler); the default path's tests that call 1's crash cut short
    timeout 60 python -m bench.launch_barrier --out "$OUT/launch_barrier.json" > "$OUT/launch_barrier.txt" 2>&1
    echo "== launch_barrier rc=$?"; cat "$OUT/launch_barrier.txt" | grep programs
    timeout 100 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py -k "dataflow" \
      > "$OUT/dataflow_tests.txt" 2>&1
    echo "== dataflow tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/dataflow_tests.txt" | cut -c1-160 | tail -4
    chain gpt2-xl flow '[{"dataflow": true}, {"poll_volatile": false}]'
    timeout 260 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py -k "not model and not dataflow" \
      > "$OUT/default_tests.txt" 2>&1
    echo "== default-path tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/default_tests.txt" | cut -c1-160 | tail -4 ;;
  barrier)  # call 3: the barrier kinds (count / count_fence / flags): cost alone, GPU tests, the chain bench
    timeout 90 python -m bench.launch_barrier --out "$OUT/launch_barrier.json" > "$OUT/launch_barrier.txt" 2>&1
    echo "== launch_barrier rc=$?"; grep programs "$OUT/launch_barrier.txt" | grep -E " (0|1|4) barriers"
    timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py -k "fence or flags" \
      > "$OUT/barrier_tests.txt" 2>&1
    echo "== barrier tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/barrier_tests.txt" | cut -c1-160 | tail -4
    for m in gpt2-xl gpt2; do chain $m barrier '[{"barrier": "count_fence"}, {"barrier": "flags"}]'; done ;;
  prefetch)  # call 5: each program's first item of the next matmul phase pulled into L2 during the barrier wait
    timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py -k "prefetch" \
      > "$OUT/prefetch_tests.txt" 2>&1
    echo "== prefetch tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/prefetch_tests.txt" | cut -c1-160 | tail -4
    V='[{"prefetch_rows": 32}, {"prefetch_rows": 64}, {"prefetch_rows": 128}, {"prefetch_rows": 256}, {"prefetch_rows": 512}]'
    for m in gpt2-xl gpt2; do chain $m prefetch "$V"; done ;;
  final)  # call 6: prefetch per phase (chain, xl); the model's decode with prefetch_rows=64 the default
    V='[{"prefetch_rows": 0}, {"prefetch_phases": [3, 4]}, {"prefetch_phases": [0]}, {"prefetch_phases": [2, 3, 4]},
        {"prefetch_rows": 128, "prefetch_phases": [3, 4]}, {"prefetch_rows": 32, "prefetch_phases": [0, 2]}]'
    chain gpt2-xl phases "$V"
    timeout 200 python -m bench.decode --model gpt2,gpt2-xl --backend xla,pallas --batch 1 --tokens 256 --reps 3 \
      --out "$OUT/final_decode.json" > "$OUT/final_decode.txt" 2>&1
    echo "== decode rc=$?"; grep -A5 "^model" "$OUT/final_decode.txt" | cut -c1-130
    timeout 120 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
      --quantize none,int8,int4 --out "$OUT/final_quant.json" > "$OUT/final_quant.txt" 2>&1
    echo "== quant rc=$?"; grep -A4 "^model" "$OUT/final_quant.txt" | cut -c1-130 ;;
  tests)  # call 7: every block-kernel test on the GPU, full-size parity with the block kernel forced
    timeout 300 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py -k "not model" \
      > "$OUT/tests.txt" 2>&1
    echo "== decode_layer tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/tests.txt" | cut -c1-160 | tail -6
    JAXGPT_DECODE_LAYER=1 timeout 200 python -m pytest -q -x -p no:cacheprovider tests/test_pallas_backend.py \
      -k "full_size or decode" > "$OUT/parity.txt" 2>&1
    echo "== full-size parity + decode tests, block kernel forced rc=$?"; tail -1 "$OUT/parity.txt" | cut -c1-200 ;;
  outsplit)  # call 8: fewer MLP-output partials (the next block's prologue reads every one) on the HBM chain
    V='[{"out": [64, 128, 4]}, {"out": [64, 128, 5]}, {"out": [64, 128, 6]}, {"out": [128, 128, 5]},
        {"out": [128, 128, 6]}, {"out": [64, 64, 4]}]'
    for m in gpt2-xl gpt2; do chain $m outsplit "$V"; done ;;
  cublas)  # call 9: prefill projections on cuBLAS from 4096 rows (the new default) vs our Mosaic/Triton matmuls
    timeout 200 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --breakdown 6 \
      --out "$OUT/prefill_cublas.json" > "$OUT/prefill_cublas.txt" 2>&1
    echo "== prefill, default (cuBLAS projections) rc=$?"; grep -A5 "^model" "$OUT/prefill_cublas.txt" | cut -c1-150
    JAXGPT_MATMUL=mosaic timeout 150 python -m bench.prefill --model gpt2,gpt2-xl --backend pallas \
      --out "$OUT/prefill_ours.json" > "$OUT/prefill_ours.txt" 2>&1
    echo "== prefill, JAXGPT_MATMUL=mosaic (session 6's default) rc=$?"; grep -A3 "^model" "$OUT/prefill_ours.txt" | cut -c1-150
    JAXGPT_MATMUL=xla timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_pallas_backend.py \
      -k "full_size or cublas" > "$OUT/parity_cublas.txt" 2>&1
    echo "== full-size parity, JAXGPT_MATMUL=xla rc=$?"; tail -1 "$OUT/parity_cublas.txt" | cut -c1-200 ;;
  cublas2)  # call 10: c_fc (GELU) back on our Mosaic matmul, the other projections on cuBLAS; vs all cuBLAS, XLA
    timeout 200 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --breakdown 6 \
      --out "$OUT/prefill_mixed.json" > "$OUT/prefill_mixed.txt" 2>&1
    echo "== prefill, default rc=$?"; grep -A5 "^model" "$OUT/prefill_mixed.txt" | cut -c1-150
    JAXGPT_MATMUL=xla timeout 150 python -m bench.prefill --model gpt2,gpt2-xl --backend pallas \
      --out "$OUT/prefill_allcublas.json" > "$OUT/prefill_allcublas.txt" 2>&1
    echo "== prefill, JAXGPT_MATMUL=xla rc=$?"; grep -A3 "^model" "$OUT/prefill_allcublas.txt" | cut -c1-150 ;;
  *) echo "usage: session7.sh scalar|barrier|prefetch|final|tests|outsplit|cublas|cublas2"; exit 2 ;;
esac
