#!/usr/bin/env bash
# What the GPU has not yet run after session 6, as one command of under 10 minutes:
#   source .gpu/env.sh && bash bench/gpu/next_session.sh
# 1. DecodeLayerPlan.dataflow (built after the device time ran out; CPU-verified, lowering checked): its GPU tests
#    (both forms, every dtype) beside the default path's (its counter stride changed after the last GPU run), then the HBM-bound chain bench with it, and the model's decode with it forced.
# 2. The barrier's two polls re-timed with the mended acquire (session 6 timed volatile polling only before the fix).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py -k "not model" \
  > "$OUT/dataflow_tests.txt" 2>&1
echo "== decode_layer tests (default path and dataflow) rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/dataflow_tests.txt" | cut -c1-160 | tail -4
for m in gpt2-xl gpt2; do
  timeout 150 python -m bench.decode_layer --model $m --quick \
    --variants '[{"dataflow": true}, {"poll_volatile": false}, {"dataflow": true, "poll_volatile": false}]' \
    --out "$OUT/flow_$m.json" > "$OUT/flow_$m.txt" 2>&1; echo "== $m rc=$?"
  grep -E "^all|^no phase" "$OUT/flow_$m.txt" | cut -c1-110
done
