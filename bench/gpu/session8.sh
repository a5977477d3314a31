#!/usr/bin/env bash
# Session 8's GPU calls, one mode a call (each under 10 minutes): source .gpu/env.sh && bash bench/gpu/session8.sh MODE
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
case "${1:-}" in
  attn1)  # call 1: the ping-pong attention protocol (mbarrier / named barriers, P·V in place, no auto barriers)
    # against the session-4 kernel and the peers, every issue-6 shape; the xl decode step's kernel breakdown.
    # Ran knobs since folded into the kernel (commit 709c120 has them); on later trees the variants fail to build.
    timeout 280 python -m bench.attention_sweep --configs kv128s2,kv256s2,kv64s2,kv128s3,kv256s3 \
      --variants '[{}, {"pingpong": true}, {"pingpong": true, "acc_in_place": true},
                   {"pingpong": true, "acc_in_place": true, "auto_barriers": false}]' \
      --out "$OUT/attn_mbarrier.json" > "$OUT/attn_mbarrier.txt" 2>&1
    echo "== sweep (mbarrier variants + peers) rc=$?"
    timeout 150 python -m bench.attention_sweep --configs kv128s2,kv256s2,kv64s2,kv128s3,kv256s3 --no-peers \
      --variants '[{"pingpong": true, "named_barriers": true},
                   {"pingpong": true, "named_barriers": true, "acc_in_place": true, "auto_barriers": false}]' \
      --out "$OUT/attn_named.json" > "$OUT/attn_named.txt" 2>&1
    echo "== sweep (named barriers) rc=$?"; grep -i "failed\|error" "$OUT/attn_named.txt" | head -3 | cut -c1-200
    timeout 120 python -m bench.decode --model gpt2-xl --backend pallas --batch 1 --tokens 128 --reps 2 \
      --breakdown 14 --out "$OUT/decode_xl_breakdown.json" > "$OUT/decode_xl_breakdown.txt" 2>&1
    echo "== decode breakdown rc=$?"; tail -18 "$OUT/decode_xl_breakdown.txt" | cut -c1-140
    python -m bench.attention_table "$OUT"/attn_*.json ;;
  attn2)  # call 2: the ping-pong kernel as the default (named barriers, P·V in place, no auto barriers; tuned
    # configs): its GPU tests, full-size parity through the Pallas backend, issue 6's table from one run
    # (bench.kernels: every column), whole-model prefill against XLA in the same run
    timeout 170 python -m pytest -q -p no:cacheprovider tests/test_kernels_attention_mgpu.py > "$OUT/attn_tests.txt" 2>&1
    echo "== attention tests rc=$?"; grep -E "^FAILED|passed|failed|Fatal" "$OUT/attn_tests.txt" | cut -c1-160 | tail -4
    timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_pallas_backend.py -k "full_size" \
      > "$OUT/parity.txt" 2>&1
    echo "== full-size parity rc=$?"; tail -1 "$OUT/parity.txt" | cut -c1-200
    timeout 120 python -m bench.kernels --mode attention --out "$OUT/kernels_attention.json" \
      > "$OUT/kernels_attention.txt" 2>&1
    echo "== kernels attention rc=$?"; grep -E "attention" "$OUT/kernels_attention.txt" | cut -c1-150
    timeout 150 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas \
      --out "$OUT/prefill.json" > "$OUT/prefill.txt" 2>&1
    echo "== prefill rc=$?"; grep -A5 "^model" "$OUT/prefill.txt" | cut -c1-150 ;;
  small)  # call 3: B1 T128 prefill (issue 6: launch count and latency) with kernel breakdowns; decode loop knobs
    # outside the block kernel: chunk of 64 steps an iteration, XLA command buffers (CUDA graphs) for every kind
    timeout 150 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --batch 1 --seq 128 --breakdown 10 \
      --out "$OUT/prefill_b1t128.json" > "$OUT/prefill_b1t128.txt" 2>&1
    echo "== prefill B1 T128 rc=$?"; grep -A5 "^model" "$OUT/prefill_b1t128.txt" | cut -c1-150
    dec() {  # $1 tag; the environment carries the knob
      timeout 100 python -m bench.decode --model gpt2,gpt2-xl --backend pallas --batch 1 --tokens 256 --reps 3 \
        --out "$OUT/decode_$1.json" > "$OUT/decode_$1.txt" 2>&1
      echo "== decode $1 rc=$?"; grep -E "^gpt2" "$OUT/decode_$1.txt" | cut -c1-100
    }
    dec default
    JAXGPT_DECODE_CHUNK=64 dec chunk64
    XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1" \
      dec cmdbuf
    dec default2 ;;
  sink)  # call 4: the prefetch consumed after the phase (sink_late) with more rows, on the HBM-bound chain
    # (sink_late removed after this call: no gain; commit f5d0d64 has it);
    # B1 T128 prefill again (call 3's files did not come back), its table rows printed
    for m in gpt2-xl gpt2; do
      timeout 170 python -m bench.decode_layer --model $m --quick --variants '[{"prefetch_rows": 128},
        {"sink_late": true}, {"sink_late": true, "prefetch_rows": 128}, {"sink_late": true, "prefetch_rows": 256},
        {"sink_late": true, "prefetch_rows": 512}, {"prefetch_rows": 64}]' --out "$OUT/sink_$m.json" > "$OUT/sink_$m.txt" 2>&1
      echo "== chain $m rc=$?"; grep -E "^all|^no phase|^only|prefetch|sink" "$OUT/sink_$m.txt" | cut -c1-120
    done
    timeout 120 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --batch 1 --seq 128 --breakdown 12 \
      --out "$OUT/prefill_b1t128.json" > "$OUT/prefill_b1t128.txt" 2>&1
    echo "== prefill B1 T128 rc=$?"; grep -E "^gpt2" "$OUT/prefill_b1t128.txt" | cut -c1-150 ;;
  small2)  # call 5: every projection of a small prefill on cuBLAS (B1 T128: our matmuls lost to XLA in call 4);
    # full-size parity, whose short prompts now take that path
    timeout 120 python -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --batch 1 --seq 128 \
      --out "$OUT/prefill_b1t128.json" > "$OUT/prefill_b1t128.txt" 2>&1
    echo "== prefill B1 T128 rc=$?"; grep -E "^gpt2" "$OUT/prefill_b1t128.txt" | cut -c1-150
    timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_pallas_backend.py -k "full_size" \
      > "$OUT/parity.txt" 2>&1
    echo "== full-size parity rc=$?"; tail -1 "$OUT/parity.txt" | cut -c1-200 ;;
  *) echo "usage: bash bench/gpu/session8.sh attn1|attn2|small|sink|small2"; exit 2 ;;
esac
