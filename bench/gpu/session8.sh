#!/usr/bin/env bash
# Session 8's GPU calls, one mode a call (each under 10 minutes): source .gpu/env.sh && bash bench/gpu/session8.sh MODE
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
case "${1:-}" in
  attn1)  # call 1: the ping-pong attention protocol (mbarrier / named barriers, P·V in place, no auto barriers)
    # against the session-4 kernel and the peers, every issue-6 shape; the xl decode step's kernel breakdown
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
  *) echo "usage: bash bench/gpu/session8.sh attn1"; exit 2 ;;
esac
