"""Experiment (session 11): how fast a chain of decode projections runs as Mosaic GPU kernels with and without
programmatic dependent launch (PDL), against the bytes they read.

A "block" is gpt2-xl's four projections at B = 1 (1600→4800, 1600→1600, 1600→6400, 6400→1600: 61.4 MB of bf16
weights), each its own ``matvec_mgpu`` kernel with its own weights; ``--blocks`` of them in one jitted call. Two
feeds: ``const`` gives every kernel a fixed x (kernels back to back, nothing between them), ``chain`` feeds each
kernel the previous one's product (an XLA fusion between kernels sums the splits, transposes and casts, as the
model's next-kernel prologue would). Timing is wall clock over ``--calls`` calls dispatched back to back (CUPTI
sums kernel times, which overlap under PDL), median of ``--reps`` such runs; µs a block and GB/s of weights.

    python -m bench.pdl_chain --blocks 8

Measured on the H100 (session 11, bench/NOTES.md): 32.4 µs a block with PDL, 32.6 without, 32.6-32.7 with PDL and
no wait; the CUPTI sum of kernel durations is the same: the kernels do not overlap on this jax/XLA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SHAPES = ((1600, 4800, 5), (1600, 1600, 5), (1600, 6400, 5), (6400, 1600, 20))  # (K, N, splits) of one block


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--feeds", default="const,chain")
    ap.add_argument("--pdl", default="1,0,nowait", help="1: PDL, 0: none, nowait: PDL without the wait (const only)")
    ap.add_argument("--loop", type=int, default=20, help="chain feed: iterations of one lax.fori_loop a call")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from pallas_kernels.matvec_mgpu import matvec_mgpu, matvec_mgpu_finish, matvec_mgpu_reference

    if jax.default_backend() != "gpu":
        print("error: bench.pdl_chain needs a GPU", file=sys.stderr)
        return 2
    key = jax.random.key(0)
    weights = []
    for b in range(args.blocks):
        for j, (K, N, _) in enumerate(SHAPES):
            weights.append((jax.random.normal(jax.random.fold_in(key, 10 * b + j), (K, N), jnp.float32) * 0.02)
                           .astype(jnp.bfloat16))
    xs = [jax.random.normal(jax.random.fold_in(key, 1000 + j), (1, K), jnp.bfloat16) for j, (K, _, _) in
          enumerate(SHAPES)]
    wbytes = sum(w.size * 2 for w in weights)

    def make(feed: str, pdl: str):
        kw = {"pdl": pdl != "0", "pdl_wait": pdl != "nowait"}

        def chain(ws, x):
            for i, w in enumerate(ws):
                K, N, s = SHAPES[i % 4]
                x = matvec_mgpu_finish(matvec_mgpu(x[:, :K], w, splits=s, **kw), 1).astype(jnp.bfloat16)
            return x

        def run(ws, xs):
            if feed == "const":  # kernels back to back, each on a fixed x
                return jnp.stack([matvec_mgpu(xs[i % 4], w, splits=SHAPES[i % 4][2], **kw)[0, 0, 0]
                                  for i, w in enumerate(ws)])
            # one dispatch: the chain repeated in a loop, each kernel fed the previous one's product
            return jax.lax.fori_loop(0, args.loop, lambda _, x: chain(ws, x), xs[0])
        return jax.jit(run)

    # correctness first: one product against the float32 reference
    p = matvec_mgpu(xs[0], weights[0], splits=SHAPES[0][2])
    err = float(jnp.abs(matvec_mgpu_finish(p, 1) - matvec_mgpu_reference(xs[0], weights[0])).max())
    print(f"check 1600x4800: max |err| {err:.3g}, nan {bool(jnp.isnan(p).any())}")

    rows = []
    from jax.experimental.mosaic.gpu import profiler
    for feed in args.feeds.split(","):
        for pdl in args.pdl.split(","):
            if feed == "chain" and pdl == "nowait":
                continue
            f = make(feed, pdl)
            t0 = time.perf_counter()
            jax.block_until_ready(f(weights, xs))
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(f(weights, xs))
            per = []
            calls = args.calls if feed == "const" else 3
            blocks = args.blocks * (1 if feed == "const" else args.loop)
            for _ in range(args.reps):
                t0 = time.perf_counter()
                outs = [f(weights, xs) for _ in range(calls)]
                jax.block_until_ready(outs)
                per.append((time.perf_counter() - t0) / (calls * blocks) * 1e6)
            us = statistics.median(per)
            _, kt = profiler.measure(f, aggregate=False)(weights, xs)  # CUPTI: each kernel's own duration
            all_us = sum(t for _, t in kt) * 1e3 / blocks
            row = {"feed": feed, "pdl": pdl, "us_per_block": us, "min_us": min(per), "gbps": wbytes / args.blocks / us
                   / 1e3, "compile_s": compile_s, "cupti_sum_us_per_block": all_us, "kernels": len(kt),
                   "first_kernels": kt[:6]}
            rows.append(row)
            print(f"{feed:5s} pdl={pdl:6s}: {us:7.2f} us/block (min {min(per):.2f}), "
                  f"{row['gbps']:.0f} GB/s of weights; CUPTI kernel sum {all_us:.2f} us/block over {len(kt)} kernels; "
                  f"compile {compile_s:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"blocks": args.blocks, "shapes": SHAPES, "rows": rows,
                       "method": f"wall clock of {args.calls} calls back to back / blocks, median of {args.reps}"},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
