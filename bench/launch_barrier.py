"""What a kernel boundary costs against a grid barrier, on this GPU (GPU only; CUPTI device time, median of 20).

    python -m bench.launch_barrier [--programs 132] [--out FILE.json]

A chain of 8 dependent kernels of ``--programs`` persistent programs (as the decode block kernel launches them),
each doing nothing but 0..4 grid barriers (``pallas_kernels.decode_layer._barrier``, both polls), timed per kernel.
The slope over barriers is a barrier's cost; the intercept a launch's. If a launch costs much more than a barrier,
several blocks a kernel (the boundary between blocks a barrier) pays.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bench.timing import device_time_ms, require_gpu
from pallas_kernels._common import compiler_params
from pallas_kernels.decode_layer import BARRIERS, _barrier, counter_slots, default_programs

CHAIN, REPS = 8, 4


def _kernel(x_ref, cnt_ref, o_ref, cnt_out, *, barriers: int, link: int, volatile: bool):
    del cnt_out  # (aliased to cnt_ref)
    for p in range(barriers):
        _barrier(cnt_ref, link * counter_slots(1, 1) + p, volatile)
    pl.when(pl.program_id(0) == 0)(lambda: o_ref.__setitem__(0, x_ref[0] + 1.0))


def _chain(programs: int, barriers: int, volatile: bool):
    def one(x, cnt, link):
        return pl.pallas_call(
            functools.partial(_kernel, barriers=barriers, link=link, volatile=volatile),
            out_shape=[jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct(cnt.shape, jnp.int32)],
            grid=(programs,), in_specs=[pl.no_block_spec] * 2, out_specs=[pl.no_block_spec] * 2,
            input_output_aliases={1: 1}, compiler_params=compiler_params(8, 1), name="jaxgpt_launch_barrier",
        )(x, cnt)

    def body(_, x):
        cnt = jnp.zeros((CHAIN * counter_slots(1, 1),), jnp.int32)
        for link in range(CHAIN):
            x, cnt = one(x, cnt, link)
        return x

    return jax.jit(lambda x: jax.lax.fori_loop(0, REPS, body, x))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    require_gpu("bench.launch_barrier")
    programs = args.programs or default_programs()
    rows = []
    x = jnp.zeros((1,), jnp.float32)
    for volatile in (True, False):
        for barriers in range(BARRIERS + 1):
            t = device_time_ms(_chain(programs, barriers, volatile), x)["median_ms"] * 1e3 / (CHAIN * REPS)
            rows.append({"programs": programs, "barriers": barriers, "volatile": volatile, "us": t})
            print(f"{programs} programs, {barriers} barriers ({'volatile' if volatile else 'atomic'} poll): "
                  f"{t:6.2f} us a kernel", flush=True)
    if args.out:
        json.dump({"device": jax.devices()[0].device_kind, "rows": rows}, open(args.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
