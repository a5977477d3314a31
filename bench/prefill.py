"""Whole-model prefill: one forward at (B, T) per model, backend and dtype, as device time.

    python -m bench.prefill --model gpt2,gpt2-xl --dtype bfloat16 --batch 8 --seq 1024 [--backend xla,pallas]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import device_time_ms, group_kernels, kernel_breakdown, random_weights
from jaxgpt.engine import Engine


def prefill_case(model: str, backend: str, dtype: str, batch: int, seq: int, *, breakdown: int = 0,
                 iterations: int = 20, quantize: str | None = None) -> dict:
    cfg, sd = random_weights(model)
    engine = Engine(cfg, sd, dtype=dtype, backend=backend, source=f"{model} random", quantize=quantize)
    t0 = time.perf_counter()
    fn = engine.compiled(batch, seq)
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = jax.device_put(jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq)), jnp.int32), engine.device)
    last = jax.device_put(jnp.full((batch,), seq - 1, jnp.int32), engine.device)
    out = fn(engine.state, ids, last)
    finite = bool(np.all(np.isfinite(np.asarray(out))))
    t = device_time_ms(fn, engine.state, ids, last, iterations=iterations)
    flops = 2 * batch * seq * (cfg.num_params - cfg.vocab_size * cfg.n_embd - cfg.n_ctx * cfg.n_embd) \
        + 2 * cfg.n_layer * batch * cfg.n_head * seq * seq * cfg.head_dim  # matmuls + causal attention
    row = {"model": model, "backend": backend, "dtype": dtype, "batch": batch, "seq": seq, "compile_s": compile_s,
           "finite": finite, "tflops": flops / (t["median_ms"] * 1e-3) / 1e12, **t}
    if breakdown and jax.default_backend() == "gpu":
        ks = kernel_breakdown(fn, engine.state, ids, last)
        row["kernels"] = ks[:breakdown]
        row["kernel_groups"] = group_kernels(ks)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2,gpt2-xl")
    ap.add_argument("--backend", default="xla")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--breakdown", type=int, default=0, help="list the N kinds of kernel that take longest (count, total)")
    ap.add_argument("--out", default=None, help="write rows as JSON here")
    args = ap.parse_args(argv)
    rows = [prefill_case(m, b, args.dtype, args.batch, args.seq, breakdown=args.breakdown)
            for m in args.model.split(",") for b in args.backend.split(",")]
    print(f"\nprefill B={args.batch} T={args.seq} {args.dtype} on {jax.devices()[0].device_kind}")
    print(f"{'model':<10} {'backend':<8} {'median ms':>10} {'min':>8} {'max':>8} {'TFLOP/s':>8} {'compile s':>9}")
    for r in rows:
        print(f"{r['model']:<10} {r['backend']:<8} {r['median_ms']:10.3f} {r['min_ms']:8.3f} {r['max_ms']:8.3f} "
              f"{r['tflops']:8.1f} {r['compile_s']:9.2f}{'' if r['finite'] else '  NON-FINITE'}")
        for name, count, ms in r.get("kernel_groups", [])[:args.breakdown]:
            print(f"    {count:5d} {ms * 1e3:9.1f} us  {name[:90]}")
    print(rows[0]["method"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
