#!/usr/bin/env bash
# Issue 7 on the GPU: generation and decode-attention tests compiled on the H100, then the decode benchmark.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STAGE=${1:-all}
if [[ $STAGE == all || $STAGE == test ]]; then
  timeout ${TEST_TIMEOUT:-200} python -m pytest -q -x ${TESTS:-tests/test_kernels_decode_attention.py tests/test_sampling.py tests/test_generate.py} 2>&1 \
    | tee "$OUT/decode_tests.txt" | grep -v -i warn | tail -8
fi
if [[ $STAGE == all || $STAGE == bench ]]; then
  timeout ${BENCH_TIMEOUT:-330} python -m bench.decode --model ${MODELS:-gpt2,gpt2-xl} --backend ${BACKENDS:-xla,pallas} \
    --batch ${BATCHES:-1,8} --tokens 256 --reps 3 --breakdown 14 ${HF:+--hf $HF} --out "$OUT/decode.json" 2>&1 \
    | tee "$OUT/decode.txt" | grep -v '^{' | grep -v -i warn | tail -${TAIL:-100}
fi
