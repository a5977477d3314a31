#!/usr/bin/env bash
# Regenerate the tables of docs/performance.md, one step per table.
#
#   bash bench/reproduce.sh STEP [OUT_DIR]
#
# STEP      kernels | prefill | decode | quant | scaling | all
# OUT_DIR   default bench/results/<gpu-name>-<date>/ (e.g. bench/results/h100-80gb-hbm3-2026-12-05/)
#
# Steps (each meant to finish in under 10 minutes on one GPU; scaling needs several GPUs of one host):
#   kernels  per-kernel device time at GPT-2 shapes against XLA, cuDNN, tokamax and torch where installed
#            (python -m bench.kernels), the prefill projections on each Mosaic GPU tile plan against Triton and
#            cuBLAS (python -m bench.matmul_tiles), and gpt2-xl's decode-sized projections on HBM-resident weights
#            (python -m bench.decode_sweep)
#   prefill  whole-model prefill, XLA vs Pallas backend, B=8 T=1024 and B=1 T=128 (python -m bench.prefill)
#   decode   ms/token of the compiled decode loop, gpt2 and gpt2-xl, B=1 and B=8, XLA vs Pallas
#            (python -m bench.decode; HF transformers eager too when torch sees a GPU)
#   quant    decode B=1 on the Pallas backend with bf16, int8, int4 weights, with and without the int8 LM head
#            (python -m bench.decode --quantize ...)
#   scaling  data-parallel throughput and tensor-parallel decode over the GPUs of one host (python -m bench.scaling)
#   all      every step above (scaling only where more than one GPU is visible)
#
# Each step writes <step>*.txt (what it printed) and <step>*.json (the rows) into OUT_DIR, plus env.txt (GPU,
# driver, jax version, commit). Run from a clone of the repository, after `pip install -e '.[test]'` and a CUDA
# build of jax (e.g. `pip install -U "jax[cuda13]"`). Set PYTHON to use another interpreter.
set -euo pipefail

STEPS="kernels prefill decode quant scaling all"
usage="usage: bash bench/reproduce.sh STEP [OUT_DIR]   (STEP: ${STEPS// / | })"

step="${1:-}"
case "$step" in
  -h|--help) echo "$usage"; exit 0 ;;
  "") echo "error: no step given; $usage" >&2; exit 2 ;;
  kernels|prefill|decode|quant|scaling|all) ;;
  *) echo "error: unknown step '$step' (choose one of: ${STEPS// /, })" >&2; exit 2 ;;
esac
if [ "$#" -gt 2 ]; then
  echo "error: too many arguments; $usage" >&2; exit 2
fi

cd "$(dirname "$0")/.."   # the repository root: bench/ and jaxgpt/ are imported from the clone
PY="${PYTHON:-python}"

gpu_name() {
  local name=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
  fi
  if [ -z "$name" ]; then
    name="$("$PY" -c 'import jax; print(jax.devices()[0].device_kind)' 2>/dev/null || echo unknown)"
  fi
  echo "$name" | tr '[:upper:]' '[:lower:]' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//'
}

gpu_count() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l
  else
    echo 0
  fi
}

OUT="${2:-bench/results/$(gpu_name)-$(date +%F)}"
mkdir -p "$OUT"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)')"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "devices", jax.devices())'
} > "$OUT/env.txt" 2>&1 || true

run() {  # run NAME CMD...: print the command, run it, keep its output in OUT/NAME.txt
  local name="$1"; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.txt"
}

step_kernels() {
  run kernels "$PY" -m bench.kernels --out "$OUT/kernels.json"
  run kernels_matmul_tiles "$PY" -m bench.matmul_tiles --out "$OUT/kernels_matmul_tiles.json"
  run kernels_decode_sweep "$PY" -m bench.decode_sweep --model gpt2-xl --rows 1 --formats bf16 \
    --out "$OUT/kernels_decode_sweep.json"
}

step_prefill() {
  run prefill_b8_t1024 "$PY" -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --dtype bfloat16 \
    --batch 8 --seq 1024 --out "$OUT/prefill_b8_t1024.json"
  run prefill_b1_t128 "$PY" -m bench.prefill --model gpt2,gpt2-xl --backend xla,pallas --dtype bfloat16 \
    --batch 1 --seq 128 --out "$OUT/prefill_b1_t128.json"
}

step_decode() {
  local hf=()
  if "$PY" -c 'import sys, torch, transformers; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    hf=(--hf eager)
  fi
  run decode "$PY" -m bench.decode --model gpt2,gpt2-xl --backend xla,pallas --dtype bfloat16 --batch 1,8 \
    --tokens 256 --reps 3 ${hf[@]+"${hf[@]}"} --out "$OUT/decode.json"
}

step_quant() {
  run quant "$PY" -m bench.decode --model gpt2,gpt2-xl --backend pallas --dtype bfloat16 --batch 1 \
    --tokens 256 --reps 3 --quantize none,int8,int4,int8+head,int4+head --out "$OUT/quant.json"
}

step_scaling() {
  local n
  n="$(gpu_count)"
  if [ "$n" -lt 2 ]; then
    echo "note: scaling wants several GPUs of one host; $n visible, so it shows one device only"
  fi
  run scaling "$PY" -m bench.scaling --model gpt2,gpt2-xl --tp-model gpt2-large --backend pallas \
    --dtype bfloat16 --out "$OUT/scaling"
}

case "$step" in
  kernels) step_kernels ;;
  prefill) step_prefill ;;
  decode) step_decode ;;
  quant) step_quant ;;
  scaling) step_scaling ;;
  all)
    step_kernels
    step_prefill
    step_decode
    step_quant
    if [ "$(gpu_count)" -ge 2 ]; then step_scaling; else echo "== scaling: skipped (one GPU visible)"; fi
    ;;
esac
echo "results in $OUT"
