"""Run session 11's skeleton once per configuration and nothing else (no CUPTI timing), for Nsight Compute:

    ncu --set full --page details python -m bench.skeleton_once

One block of gpt2-xl's four projections, 16 slots, eager release; the producer's copies in flight uncapped, then
capped at 4 (bench/block_skeleton_mgpu.py; bench/NOTES.md session 11).
"""

from __future__ import annotations

import sys

import jax


def main() -> int:
    if jax.default_backend() != "gpu":
        print("error: bench.skeleton_once needs a GPU", file=sys.stderr)
        return 2
    from bench.block_skeleton_mgpu import inputs, skeleton
    ws, xs = inputs(1)
    grid = jax.devices()[0].core_count
    for inflight in (0, 4):
        f = jax.jit(lambda xs, ws, fl=inflight: skeleton(xs, ws, grid=grid, stages=16, eager=True, inflight=fl))
        jax.block_until_ready(f(xs, ws[0]))
        print(f"inflight {inflight}: ran", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
