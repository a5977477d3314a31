#!/usr/bin/env bash
# Session 3, second call (one H100; issues 5 and 7): the generation tests with the decode step chosen by shape,
# then the quick bench command whose files are committed under bench/results/h100/.
#   source .gpu/env.sh && bash bench/gpu/session3_bench.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 100 python -m pytest -q -x tests/test_generate.py > "$OUT/generate_tests.txt" 2>&1; tail -2 "$OUT/generate_tests.txt"
timeout 430 python -m jaxgpt bench all --quick --out "$OUT/bench" > "$OUT/bench.txt" 2>&1
grep -v "^\[bench\]" "$OUT/bench.txt" | tail -45
