"""Run session 11's skeleton once per configuration and nothing else (no CUPTI timing), for Nsight Compute:

    ncu --set full --page details python -m bench.skeleton_once
    ncu --section WarpStateStats python -m bench.skeleton_once --quant int8 --qtile-k 128 --consumers 2 --stages 24

Default: one block of gpt2-xl's four projections, 16 slots, eager release; the producer's copies in flight
uncapped, then capped at 4 (bench/block_skeleton_mgpu.py; bench/NOTES.md session 11). With ``--quant`` (session
13): one configuration of the quantized skeleton on ``--shapes`` (default gpt2-xl's with C = 1536, whose K
divides into 128-deep tiles), capped at 4 in flight.
"""

from __future__ import annotations

import argparse
import sys

import jax

C1536 = "1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quant", default="none", choices=("none", "int8", "int4"))
    ap.add_argument("--qtile-k", type=int, default=128)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--stages", type=int, default=24)
    ap.add_argument("--cast-first", action="store_true")
    ap.add_argument("--shapes", default=C1536)
    args = ap.parse_args(argv)
    if jax.default_backend() != "gpu":
        print("error: bench.skeleton_once needs a GPU", file=sys.stderr)
        return 2
    from bench.block_skeleton_mgpu import inputs, quantized, skeleton
    grid = jax.devices()[0].core_count
    if args.quant == "none":
        ws, xs = inputs(1)
        for inflight in (0, 4):
            f = jax.jit(lambda xs, ws, fl=inflight: skeleton(xs, ws, grid=grid, stages=16, eager=True, inflight=fl))
            jax.block_until_ready(f(xs, ws[0]))
            print(f"inflight {inflight}: ran", flush=True)
        return 0
    shapes = tuple(tuple(map(int, p.split(":"))) for p in args.shapes.split(","))
    ws, xs = inputs(1, shapes)
    qs = quantized(ws[0], 8 if args.quant == "int8" else 4)
    f = jax.jit(lambda xs, ws, ss: skeleton(xs, ws, scales=ss, grid=grid, stages=args.stages, eager=True, inflight=4,
                                            consumers=args.consumers, qtile_k=args.qtile_k, shapes=shapes,
                                            cast_first=args.cast_first))
    jax.block_until_ready(f(xs, [q for q, _ in qs], [s for _, s in qs]))
    print(f"{args.quant} k{args.qtile_k} consumers {args.consumers}: ran", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
