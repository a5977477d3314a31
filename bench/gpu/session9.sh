#!/usr/bin/env bash
# Session 9's GPU calls, one mode a call (each under 10 minutes): source .gpu/env.sh && bash bench/gpu/session9.sh MODE
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
chain() {  # $1 model, $2 format, $3 variants JSON, $4 tag
  timeout 230 python -m bench.decode_layer --model $1 --format $2 --quick --variants "$3" \
    --out "$OUT/chain_$4.json" > "$OUT/chain_$4.txt" 2>&1
  echo "== chain $4 rc=$?"; grep -E "^all|^no phase|^only|failed" "$OUT/chain_$4.txt" | cut -c1-150
}
case "${1:-}" in
  deep)  # call 1: int8 block kernel with K tiles twice as deep (as many bytes a tile as bf16) and two heads a
    # c_proj step, against the old int8 plan; bf16 with deeper tiles / more stages; GPU tests of the new plans.
    # Ran with the int8 heuristic deep and the proj_heads knob (commit 1df8395 has them; both since removed: the
    # proj_heads variants no longer build, and the int8 base is the float plan now)
    timeout 120 python -m pytest -q -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "int8_weights or two-heads" > "$OUT/tests.txt" 2>&1
    echo "== tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/tests.txt" | cut -c1-160 | tail -4
    chain gpt2-xl int8 '[{"qkv": [128, 64, 3], "fc": [128, 64, 2], "out": [128, 128, 8], "proj_heads": 1},
      {"out": [128, 128, 8]}, {"out": [64, 256, 4]}, {"proj_heads": 1}, {"num_stages": 3}, {"num_stages": 5}]' xl_int8
    chain gpt2-xl bf16 '[{"proj_heads": 2}, {"qkv": [128, 128, 3], "num_stages": 3},
      {"fc": [128, 128, 2], "num_stages": 3}, {"out": [128, 256, 9]}, {"num_stages": 5}]' xl_bf16 ;;
  probe)  # call 2: what bounds a matmul phase: weight tiles, activation tiles or both replaced by constants
    for pr in "" w x xw; do
      timeout 130 python -m bench.decode_layer --model gpt2-xl --quick --no-five-call --variants '[]' \
        --base "{\"probe\": \"$pr\"}" --out "$OUT/probe_$pr.json" > "$OUT/probe_$pr.txt" 2>&1
      echo "== probe '$pr' rc=$?"; grep -E "^all|^no phase|^only|failed" "$OUT/probe_$pr.txt" | cut -c1-150
    done ;;
  lnkv)  # call 3: LayerNorm statistics in one reduction pass; the attention phase's first K/V slots prefetched
    # during the barrier before it; XLA command buffers as the CLI now sets them (decode with and without)
    timeout 200 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "matches_reference or chained or int8_weights or model_decode" > "$OUT/tests.txt" 2>&1
    echo "== block tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/tests.txt" | cut -c1-160 | tail -4
    for m in gpt2-xl gpt2; do
      timeout 110 python -m bench.decode_layer --model $m --quick --no-five-call \
        --variants '[{"prefetch_phases": [0, 2, 3, 4]}]' --out "$OUT/chain_$m.json" > "$OUT/chain_$m.txt" 2>&1
      echo "== chain $m rc=$?"; grep -E "^all|^no phase|^only|failed" "$OUT/chain_$m.txt" | cut -c1-150
    done
    for cb in off on; do
      timeout 100 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
        --command-buffers $cb --out "$OUT/decode_cb$cb.json" > "$OUT/decode_cb$cb.txt" 2>&1
      echo "== decode command buffers $cb rc=$?"; grep -E "^gpt2" "$OUT/decode_cb$cb.txt" | cut -c1-110
    done ;;
  final)  # call 4: LayerNorm weights loaded with the statistics' inputs; bias / LN vectors and the MLP output's
    # first c_fc bias touched into L2 during the barriers; block tests (one-kernel form), full-size parity with the
    # command buffers on, decode, the chain
    timeout 170 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "(matches_reference or int8_weights) and True or chained or model_decode" > "$OUT/tests.txt" 2>&1
    echo "== block tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/tests.txt" | cut -c1-160 | tail -4
    XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1" \
      timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_pallas_backend.py -k "full_size" \
      > "$OUT/parity.txt" 2>&1
    echo "== full-size parity, command buffers on, rc=$?"; tail -1 "$OUT/parity.txt" | cut -c1-200
    timeout 100 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
      --out "$OUT/decode.json" > "$OUT/decode.txt" 2>&1
    echo "== decode rc=$?"; grep -E "^gpt2" "$OUT/decode.txt" | cut -c1-110
    timeout 90 python -m bench.decode_layer --model gpt2-xl --quick --no-five-call --variants '[]' \
      --out "$OUT/chain.json" > "$OUT/chain.txt" 2>&1
    echo "== chain rc=$?"; grep -E "^all|^no phase|^only|failed" "$OUT/chain.txt" | cut -c1-150 ;;
  last)  # call 5: the block tests call 4 did not reach (int8, chained blocks, the model on block kernels), and
    # issue 10's one-run table: gpt2-xl B=1 decode in bf16, int8 and int4
    timeout 110 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_decode_layer.py \
      -k "int8_weights and True or chained or model_decode" > "$OUT/tests.txt" 2>&1
    echo "== block tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/tests.txt" | cut -c1-160 | tail -4
    timeout 240 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
      --quantize none,int8,int4 --out "$OUT/decode_quant.json" > "$OUT/decode_quant.txt" 2>&1
    echo "== decode quant rc=$?"; grep -E "^gpt2" "$OUT/decode_quant.txt" | cut -c1-110 ;;
  touch)  # call 7: the vector touches against none, in one run (the default's kernel is call 4's: jaxpr identical;
    # the touches and their touch_vectors flag were removed after this call)
    timeout 150 python -m bench.decode_layer --model gpt2-xl --quick --no-five-call \
      --variants '[{"touch_vectors": false}, {}, {"touch_vectors": false}]' --out "$OUT/chain.json" > "$OUT/chain.txt" 2>&1
    echo "== chain rc=$?"; grep -E "^all|^no phase|failed" "$OUT/chain.txt" | cut -c1-150 ;;
  *) echo "unknown mode ${1:-}"; exit 2 ;;
esac
