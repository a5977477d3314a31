"""Prefill projections (B·T = 8192) on the Mosaic GPU matmul's tile plans (and with ``delay_release``) vs the Triton
matmul vs XLA (GPU).

    python -m bench.matmul_tiles [--out F.json]

CUPTI device time, median of 20; one line per shape, written as it goes.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import device_time_ms, require_gpu
from pallas_kernels.matmul import matmul
from pallas_kernels.matmul_mgpu import matmul_mgpu

SHAPES = [(768, 2304), (768, 3072), (3072, 768), (1600, 4800), (1600, 6400), (6400, 1600)]  # (K, N)
TILES = [(64, 256), (128, 128), (64, 192), (64, 128), (128, 64), (64, 64)]  # (rows per warpgroup, N tile)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="matmul_tiles.json")
    args = ap.parse_args(argv)
    require_gpu("bench.matmul_tiles")
    rng = np.random.default_rng(0)
    rows, M = [], 8192
    for K, N in SHAPES:
        x = jnp.asarray(rng.standard_normal((M, K)), jnp.bfloat16)
        w = jnp.asarray(rng.standard_normal((K, N)) * K ** -0.5, jnp.bfloat16)
        b = jnp.asarray(rng.standard_normal(N), jnp.bfloat16)
        row = {"m": M, "k": K, "n": N, "us": {}}
        impls = {"xla": jax.jit(lambda x, w, b: jnp.dot(x, w) + b), "triton": jax.jit(lambda x, w, b: matmul(x, w, b))}
        for bm, bn in TILES:
            if N % bn == 0:
                impls[f"mosaic {bm}x{bn}"] = jax.jit(lambda x, w, b, bm=bm, bn=bn: matmul_mgpu(x, w, b, block_m=bm,
                                                                                             block_n=bn, stages=3))
                if bm == 64 and bn >= 192:  # the planned tiles, with one MMA in flight per warpgroup
                    impls[f"mosaic {bm}x{bn} delayed"] = jax.jit(lambda x, w, b, bm=bm, bn=bn: matmul_mgpu(
                        x, w, b, block_m=bm, block_n=bn, stages=3, delay_release=True))
        for name, fn in impls.items():
            try:
                row["us"][name] = device_time_ms(fn, x, w, b)["median_ms"] * 1e3
            except Exception as e:  # noqa: BLE001
                row["us"][name] = f"{type(e).__name__}: {str(e)[:100]}"
        rows.append(row)
        tf = {k: 2 * M * K * N / (v * 1e-6) / 1e12 for k, v in row["us"].items() if isinstance(v, float)}
        print(f"{M}x{K}x{N}: " + "  ".join(f"{k}={row['us'][k]:.1f}us/{t:.0f}TF" for k, t in
                                           sorted(tf.items(), key=lambda kv: -kv[1])), flush=True)
        with open(args.out, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
