"""Per-kernel benchmark at GPT-2 shapes: our Pallas kernels vs XLA, cuDNN and tokamax, in device time.

    python -m bench.kernels [--quick] [--out results.json]

Rates: GB/s counts bytes read + written once; attention TFLOP/s counts the causal half, 2·B·H·T²·D. Ceilings
measured in the same process: a device-to-device copy (x*2) and a bf16 8192³ matmul.
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import device_time_ms
from pallas_kernels.flash_attention import flash_attention, flash_attention_reference
from pallas_kernels.layer_norm import add_layer_norm, add_layer_norm_reference
from pallas_kernels.matmul import matmul
from pallas_kernels.mlp import mlp, mlp_reference

DT = jnp.bfloat16


def _rand(rng, *shape, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * scale, DT)


def _err(a, b):
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def peers_attention():
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)  # tokamax logs every autotuning-cache miss
    except ImportError:
        pass
    out = {"cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")}
    try:
        import tokamax
        for impl in ("triton", "mosaic"):
            out[f"tokamax_{impl}"] = (lambda impl: lambda q, k, v: tokamax.dot_product_attention(
                q, k, v, is_causal=True, implementation=impl))(impl)
    except Exception as e:  # noqa: BLE001 — peers are optional
        print(f"tokamax unavailable: {type(e).__name__}: {e}")
    return out


def run(quick: bool):
    rng = np.random.default_rng(0)
    rows = []

    def add(kind, case, impl, t, rate, unit, err=None, ceiling=None):
        rows.append({"kernel": kind, "case": case, "impl": impl, **t, "rate": rate, "unit": unit, "max_err": err,
                     "pct_ceiling": None if ceiling is None else 100 * rate / ceiling})

    # Ceilings
    big = _rand(rng, 65536, 1600)
    t = device_time_ms(jax.jit(lambda x: x * 2), big)
    copy_gbs = 2 * big.size * 2 / (t["median_ms"] * 1e-3) / 1e9
    add("ceiling", "copy 65536x1600", "xla x*2", t, copy_gbs, "GB/s")
    a, bm = _rand(rng, 8192, 8192), _rand(rng, 8192, 8192)
    t = device_time_ms(jax.jit(jnp.dot), a, bm, iterations=10)
    mm_tf = 2 * 8192 ** 3 / (t["median_ms"] * 1e-3) / 1e12
    add("ceiling", "matmul 8192^3", "xla", t, mm_tf, "TFLOP/s")
    del a, bm

    # Residual + LayerNorm
    for n, c in ([(65536, 1600), (8192, 768)] if not quick else [(65536, 1600)]):
        x, r, w, b = _rand(rng, n, c), _rand(rng, n, c), _rand(rng, c) + 1, _rand(rng, c)
        ref = add_layer_norm_reference(x.astype(jnp.float32), r.astype(jnp.float32), w.astype(jnp.float32),
                                       b.astype(jnp.float32))[1]
        for impl, fn in (("pallas", jax.jit(lambda x, r, w, b: add_layer_norm(x, r, w, b))),
                         ("xla", jax.jit(add_layer_norm_reference))):
            t = device_time_ms(fn, x, r, w, b)
            gbs = 4 * n * c * 2 / (t["median_ms"] * 1e-3) / 1e9
            add("add_layer_norm", f"{n}x{c}", impl, t, gbs, "GB/s", _err(fn(x, r, w, b)[1], ref), copy_gbs)

    # Attention
    cases = [(8, 1024, 12), (8, 1024, 25), (1, 1024, 12), (8, 128, 12), (4, 4096, 12)]
    print('ceilings done', flush=True)
    peers = peers_attention()
    for B, T, H in cases[:2] if quick else cases:
        qkv = _rand(rng, B, T, 3, H, 64)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        ref = flash_attention_reference(qkv.astype(jnp.float32))
        flops = 2 * B * H * T * T * 64
        fn = jax.jit(flash_attention)
        t = device_time_ms(fn, qkv)
        add("attention", f"B{B} T{T} H{H}", "pallas", t, flops / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
            _err(fn(qkv), ref), mm_tf)
        for name, pfn in peers.items():
            try:
                f = jax.jit(pfn)
                t = device_time_ms(f, q, k, v)
                add("attention", f"B{B} T{T} H{H}", name, t, flops / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
                    _err(f(q, k, v), ref), mm_tf)
            except Exception as e:  # noqa: BLE001
                print(f"{name} failed at B{B} T{T} H{H}: {type(e).__name__}: {str(e)[:200]}")

    # Matmuls and MLP (gpt2 and gpt2-xl widths, B·T = 8192)
    M = 8192
    for c in (768,) if quick else (768, 1600):
        for k, n in ((c, 3 * c), (c, 4 * c), (4 * c, c)):
            x, w, b = _rand(rng, M, k), _rand(rng, k, n, scale=k ** -0.5), _rand(rng, n)
            for impl, fn in (("pallas", jax.jit(lambda x, w, b: matmul(x, w, b))),
                             ("xla", jax.jit(lambda x, w, b: jnp.dot(x, w) + b))):
                t = device_time_ms(fn, x, w, b)
                add("matmul", f"{M}x{k}x{n}", impl, t, 2 * M * k * n / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
                    None, mm_tf)
        args = (_rand(rng, M, c), _rand(rng, c, 4 * c, scale=c ** -0.5), _rand(rng, 4 * c),
                _rand(rng, 4 * c, c, scale=(4 * c) ** -0.5), _rand(rng, c))
        ref = mlp_reference(*args)
        for m in ((M, 8) if not quick else (M,)):
            sub = (args[0][:m],) + args[1:]
            refm = ref[:m]
            for impl, fn in (("pallas fused", jax.jit(lambda *a: mlp(*a, variant="fused"))),
                             ("pallas two_pass", jax.jit(lambda *a: mlp(*a, variant="two_pass"))),
                             ("xla", jax.jit(lambda x, w1, b1, w2, b2: jnp.dot(
                                 jax.nn.gelu(jnp.dot(x, w1) + b1, approximate=True), w2) + b2))):
                try:
                    t = device_time_ms(fn, *sub)
                except Exception as e:  # noqa: BLE001 — e.g. a config over the shared-memory limit
                    print(f"mlp {impl} {m}x{c} failed: {type(e).__name__}: {str(e)[:160]}")
                    continue
                add("mlp", f"{m}x{c}", impl, t, 16 * m * c * c / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
                    _err(fn(*sub), refm), mm_tf)
    return rows


def print_table(rows):
    print(f"\n{'kernel':<15} {'case':<18} {'impl':<16} {'median us':>10} {'min':>8} {'max':>8} {'rate':>9} "
          f"{'unit':<8} {'%ceil':>6} {'max err':>9}")
    for r in rows:
        pct = "" if r["pct_ceiling"] is None else f"{r['pct_ceiling']:.0f}"
        err = "" if r["max_err"] is None else f"{r['max_err']:.1e}"
        print(f"{r['kernel']:<15} {r['case']:<18} {r['impl']:<16} {r['median_ms'] * 1e3:10.1f} "
              f"{r['min_ms'] * 1e3:8.1f} {r['max_ms'] * 1e3:8.1f} {r['rate']:9.1f} {r['unit']:<8} {pct:>6} {err:>9}")
    print(rows[0]["method"] + "; bf16; GB/s = bytes read + written; attention FLOPs = 2·B·H·T²·D (causal half)")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    rows = run(args.quick)
    print_table(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
