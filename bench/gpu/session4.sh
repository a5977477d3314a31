#!/usr/bin/env bash
# Session 4's GPU calls (each under 10 minutes; every step writes under $OUT as it goes):
#   source .gpu/env.sh && bash bench/gpu/session4.sh sweep    # Mosaic attention on the GPU + decode tile sweep
#   source .gpu/env.sh && bash bench/gpu/session4.sh tuned    # attention configs, decode with the tuned tiles,
#                                                             # unrolled loop, Mosaic tests, prefill
#   source .gpu/env.sh && bash bench/gpu/session4.sh final    # Mosaic matmul tests, prefill, decode (+ without
#                                                             # command buffers), matmul and attention tables
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
case "${1:-sweep}" in
sweep)
  timeout 240 python -m bench.decode_sweep --model gpt2-xl --rows 1 --formats bf16,int8,int4 \
    --out "$OUT/sweep_xl.json" --table "$OUT/h100_decode_table.json" > "$OUT/sweep_xl.txt" 2>&1
  grep -v "failed" "$OUT/sweep_xl.txt" | grep -v -i warn | tail -14
  timeout 80 python -m pytest -q -p no:cacheprovider tests/test_kernels_attention_mgpu.py > "$OUT/mgpu_tests.txt" 2>&1
  tail -4 "$OUT/mgpu_tests.txt"
  timeout 150 python -m bench.kernels --mode attention --out "$OUT/attention.json" > "$OUT/attention.txt" 2>&1
  grep -E "^attention|n/a" "$OUT/attention.txt" | cut -c1-120 | head -40
  ;;
tuned)
  timeout 150 python -m bench.attention_sweep --out "$OUT/attention_sweep.json" --table "$OUT/h100_attention_table.json" \
    > "$OUT/attention_sweep.txt" 2>&1
  grep -E "^B[0-9]" "$OUT/attention_sweep.txt" | cut -c1-250
  timeout 150 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
    --quantize none,int8,int4 --breakdown 10 --out "$OUT/decode_tuned.json" > "$OUT/decode_tuned.txt" 2>&1
  grep -A8 "^model" "$OUT/decode_tuned.txt"
  JAXGPT_DECODE_UNROLL=4 timeout 60 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 --tokens 256 \
    --reps 3 --out "$OUT/decode_unroll4.json" > "$OUT/decode_unroll4.txt" 2>&1
  echo "== unroll 4"; grep -A3 "^model" "$OUT/decode_unroll4.txt"
  timeout 90 python -m pytest -q -p no:cacheprovider tests/test_kernels_attention_mgpu.py > "$OUT/mgpu_tests.txt" 2>&1
  tail -2 "$OUT/mgpu_tests.txt"
  timeout 80 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --breakdown 8 \
    --out "$OUT/prefill.json" > "$OUT/prefill.txt" 2>&1
  grep -v -i warn "$OUT/prefill.txt" | tail -42
  XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL \
    timeout 50 python -m bench.decode --model gpt2 --backend pallas --batch 1 --tokens 256 --reps 3 \
    --out "$OUT/decode_cmdbuf.json" > "$OUT/decode_cmdbuf.txt" 2>&1
  echo "== command buffers incl. WHILE"; grep -A2 "^model" "$OUT/decode_cmdbuf.txt" || tail -3 "$OUT/decode_cmdbuf.txt"
  ;;
final)  # as run in session 4, jaxgpt then set the WHILE/CONDITIONAL command buffers itself, so that run's
        # decode.txt has them and its decode_nocb.txt does not; now they are the opt-in second run.
  timeout 80 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_matmul_mgpu.py > "$OUT/mm_tests.txt" 2>&1
  tail -3 "$OUT/mm_tests.txt" | cut -c1-300
  timeout 100 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --breakdown 6 \
    --out "$OUT/prefill.json" > "$OUT/prefill.txt" 2>&1 \
    || JAXGPT_MATMUL=triton timeout 60 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas \
    --out "$OUT/prefill.json" >> "$OUT/prefill.txt" 2>&1
  grep -v -i warn "$OUT/prefill.txt" | tail -32 | cut -c1-150
  timeout 130 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
    --quantize none,int8,int4 --out "$OUT/decode.json" > "$OUT/decode.txt" 2>&1
  grep -A7 "^model" "$OUT/decode.txt"
  XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL timeout 60 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 \
    --tokens 256 --reps 3 > "$OUT/decode_cmdbuf.txt" 2>&1
  echo "== with WHILE/CONDITIONAL command buffers"; grep -A3 "^model" "$OUT/decode_cmdbuf.txt"
  timeout 95 python -m bench.matmul_tiles --out "$OUT/matmul_tiles.json" > "$OUT/matmul_tiles.txt" 2>&1
  grep "^8192" "$OUT/matmul_tiles.txt" | cut -c1-300
  timeout 100 python -m bench.kernels --mode attention > "$OUT/attention.txt" 2>&1
  grep -E "^attention|n/a" "$OUT/attention.txt" | cut -c1-130
  ;;
esac
