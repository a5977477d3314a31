"""Per-kernel benchmark at GPT-2 shapes: our Pallas kernels vs XLA, cuDNN, tokamax and torch, in device time.

    python -m bench.kernels [--quick] [--out results.json]     (or: python -m jaxgpt bench kernels)

Modes: ``full`` (every case), ``quick`` (the headline cases), ``smoke`` (tiny shapes: what a CPU runs, in Pallas
interpret mode; the numbers say nothing about speed). Peers that are missing or fail leave their row out and say why
in ``skipped``.

Rates: GB/s counts bytes read + written once; attention TFLOP/s counts the causal half, 2·B·H·T²·D. Ceilings
measured in the same process: a device-to-device copy (x*2) and a bf16 8192³ matmul.
"""

from __future__ import annotations

import argparse
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import device_time_ms
from pallas_kernels.decode_attention import decode_attention, decode_attention_reference
from pallas_kernels.flash_attention import flash_attention, flash_attention_reference
from pallas_kernels.layer_norm import add_layer_norm, add_layer_norm_reference
from pallas_kernels.matmul import matmul, matmul_reference
from pallas_kernels.mlp import mlp, mlp_reference
from pallas_kernels.tuning import MosaicAttentionConfig, lookup

DT = jnp.bfloat16
SKIPPED: list[str] = []  # peers and cases that could not run, with the reason


def _rand(rng, *shape, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * scale, DT)


def _err(a, b):
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def peers_attention(torch_ok: bool = False):
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
        SKIPPED.append(f"tokamax: n/a ({type(e).__name__}: {str(e)[:120]})")
    if torch_ok:
        out["torch_sdpa"] = "torch"
    return out


def torch_time(fn, *args, iterations: int = 20, warmup: int = 3) -> dict:
    """Median CUDA-event time of ``fn(*args)`` (torch peers: kernels launched back to back, so launch gaps of
    short kernels are included; the method string says so)."""
    import statistics

    import torch
    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(*args)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "method": f"torch CUDA events around one call, median of {iterations} after {warmup} warm-up"}


def _to_torch(x):
    import torch
    return torch.from_dlpack(x) if hasattr(torch, "from_dlpack") else torch.utils.dlpack.from_dlpack(x)


SHAPES = {
    "full": {"ln": [(65536, 1600), (8192, 768), (8, 1600)], "attn": [(8, 1024, 12), (8, 1024, 25), (1, 1024, 12),
             (8, 128, 12), (4, 4096, 12), (1, 128, 12)], "widths": (768, 1600), "rows": 8192, "mlp_rows": (8192, 8),
             "decode": [(1, 1024, 12), (8, 1024, 12), (1, 1024, 25), (8, 512, 25)],
             "gemv": [(1, 768, 2304), (1, 3072, 768), (1, 1600, 6400), (1, 6400, 1600), (8, 1600, 4800)]},
    "quick": {"ln": [(65536, 1600)], "attn": [(8, 1024, 12), (8, 1024, 25)], "widths": (768,), "rows": 8192,
              "mlp_rows": (8192,), "decode": [(1, 1024, 12)], "gemv": [(1, 1600, 6400)]},
    # the causal-attention rows of docs/performance.md only (python -m bench.kernels --mode attention)
    "attention": {"ln": [], "attn": [(8, 1024, 12), (8, 1024, 25), (4, 4096, 12), (1, 1024, 12), (8, 128, 12)],
                  "widths": (), "rows": 0, "mlp_rows": (), "decode": [], "gemv": []},
    # the prefill projections (gpt2 and gpt2-xl widths, B·T = 8192): Triton, Mosaic GPU, XLA
    "matmul": {"ln": [], "attn": [], "widths": (768, 1600), "rows": 8192, "mlp_rows": (), "decode": [], "gemv": []},
    "smoke": {"ln": [(64, 80)], "attn": [(1, 32, 2)], "widths": (64,), "rows": 32, "mlp_rows": (32,),
              "head_dim": 16, "decode": [(2, 64, 2)], "gemv": [(1, 64, 96)]},
}


def run(quick: bool = False, mode: str | None = None):
    mode = mode or ("quick" if quick else "full")
    shapes = SHAPES[mode]
    on_gpu = jax.default_backend() == "gpu"
    rng = np.random.default_rng(0)
    rows = []

    def add(kind, case, impl, t, rate, unit, err=None, ceiling=None):
        rows.append({"kernel": kind, "case": case, "impl": impl, **t, "rate": rate, "unit": unit, "max_err": err,
                     "pct_ceiling": None if ceiling is None else 100 * rate / ceiling})

    # Ceilings
    big = _rand(rng, *((65536, 1600) if on_gpu else (1024, 256)))
    t = device_time_ms(jax.jit(lambda x: x * 2), big)
    copy_gbs = 2 * big.size * 2 / (t["median_ms"] * 1e-3) / 1e9
    add("ceiling", "copy {}x{}".format(*big.shape), "xla x*2", t, copy_gbs, "GB/s")
    n_mm = 8192 if on_gpu else 256
    a, bm = _rand(rng, n_mm, n_mm), _rand(rng, n_mm, n_mm)
    t = device_time_ms(jax.jit(jnp.dot), a, bm, iterations=10)
    mm_tf = 2 * n_mm ** 3 / (t["median_ms"] * 1e-3) / 1e12
    add("ceiling", f"matmul {n_mm}^3", "xla", t, mm_tf, "TFLOP/s")
    del a, bm

    # Residual + LayerNorm
    torch_ok = on_gpu and _torch_cuda()
    for n, c in shapes["ln"]:
        x, r, w, b = _rand(rng, n, c), _rand(rng, n, c), _rand(rng, c) + 1, _rand(rng, c)
        ref = add_layer_norm_reference(x.astype(jnp.float32), r.astype(jnp.float32), w.astype(jnp.float32),
                                       b.astype(jnp.float32))[1]
        for impl, fn in (("pallas", jax.jit(lambda x, r, w, b: add_layer_norm(x, r, w, b))),
                         ("xla", jax.jit(add_layer_norm_reference))):
            t = device_time_ms(fn, x, r, w, b)
            gbs = 4 * n * c * 2 / (t["median_ms"] * 1e-3) / 1e9
            add("add_layer_norm", f"{n}x{c}", impl, t, gbs, "GB/s", _err(fn(x, r, w, b)[1], ref), copy_gbs)
        if torch_ok:
            import torch
            tx, tr, tw, tb = (_to_torch(a) for a in (x, r, w, b))
            f = lambda: torch.nn.functional.layer_norm(tx + tr, (c,), tw, tb, 1e-5)  # noqa: E731
            t = torch_time(f)
            add("add_layer_norm", f"{n}x{c}", "torch add+F.layer_norm", t,
                4 * n * c * 2 / (t["median_ms"] * 1e-3) / 1e9, "GB/s", _err(jnp.asarray(f().float().cpu().numpy()),
                                                                             ref), copy_gbs)

    # Attention
    peers = peers_attention(torch_ok) if on_gpu else {}
    D = shapes.get("head_dim", 64)
    for B, T, H in shapes["attn"]:
        qkv = _rand(rng, B, T, 3, H, D)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        ref = flash_attention_reference(qkv.astype(jnp.float32))
        flops = 2 * B * H * T * T * D
        fn = jax.jit(flash_attention)
        t = device_time_ms(fn, qkv)
        add("attention", f"B{B} T{T} H{H}", "pallas", t, flops / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
            _err(fn(qkv), ref), mm_tf)
        if on_gpu:  # the Mosaic GPU kernel with the config the model would pick (the Pallas backend's on Hopper)
            try:
                from pallas_kernels.flash_attention_mgpu import flash_attention_mgpu
                cfg = lookup(MosaicAttentionConfig, seq=T, heads=H, head_dim=D, batch=B, dtype=qkv.dtype)
                f = jax.jit(functools.partial(flash_attention_mgpu, block_kv=cfg.block_kv, stages=cfg.stages,
                                              order=cfg.order))
                t = device_time_ms(f, qkv)
                add("attention", f"B{B} T{T} H{H}", f"pallas_mosaic kv{cfg.block_kv} s{cfg.stages}", t,
                    flops / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s", _err(f(qkv), ref), mm_tf)
            except Exception as e:  # noqa: BLE001 - reported, never fatal (a non-Hopper GPU has no Mosaic path)
                SKIPPED.append(f"pallas_mosaic B{B} T{T} H{H}: n/a ({type(e).__name__}: {str(e)[:160]})")
        for name, pfn in peers.items():
            if name == "torch_sdpa":
                import torch
                tq, tk, tv = (_to_torch(a).transpose(1, 2).contiguous() for a in (q, k, v))  # (B, H, T, D)
                f = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)  # noqa
                t = torch_time(f)
                got = jnp.asarray(f().transpose(1, 2).float().cpu().numpy())
                add("attention", f"B{B} T{T} H{H}", name, t, flops / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
                    _err(got, ref), mm_tf)
                continue
            try:
                f = jax.jit(pfn)
                t = device_time_ms(f, q, k, v)
                add("attention", f"B{B} T{T} H{H}", name, t, flops / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
                    _err(f(q, k, v), ref), mm_tf)
            except Exception as e:  # noqa: BLE001
                SKIPPED.append(f"{name} B{B} T{T} H{H}: n/a ({type(e).__name__}: {str(e)[:160]})")

    # Decode attention: one query per (row, head) against a cache filled to S (bytes: K and V read once)
    for B, S, H in shapes["decode"]:
        q, k, v = _rand(rng, B, H, D), _rand(rng, B, S, H, D), _rand(rng, B, S, H, D)
        lengths = jnp.full((B,), S, jnp.int32)
        ref = decode_attention_reference(*(a.astype(jnp.float32) for a in (q, k, v)), lengths)
        for impl, fn in (("pallas", jax.jit(decode_attention)), ("xla", jax.jit(_xla_decode_attention))):
            t = device_time_ms(fn, q, k, v, lengths)
            add("decode_attention", f"B{B} S{S} H{H}", impl, t, 2 * B * S * H * D * 2 / (t["median_ms"] * 1e-3) / 1e9,
                "GB/s", _err(fn(q, k, v, lengths), ref), copy_gbs)

    # Decode-sized matmuls (M = batch rows): the weight read is the work
    for m, k_, n in shapes["gemv"]:
        x, w, b = _rand(rng, m, k_), _rand(rng, k_, n, scale=k_ ** -0.5), _rand(rng, n)
        ref = matmul_reference(x.astype(jnp.float32), w.astype(jnp.float32), b.astype(jnp.float32))
        for impl, fn in (("pallas split-K", jax.jit(lambda x, w, b: matmul(x, w, b))),
                         ("xla", jax.jit(lambda x, w, b: jnp.dot(x, w) + b))):
            t = device_time_ms(fn, x, w, b)
            add("decode_matmul", f"{m}x{k_}x{n}", impl, t, k_ * n * 2 / (t["median_ms"] * 1e-3) / 1e9, "GB/s",
                _err(fn(x, w, b), ref), copy_gbs)

    # Matmuls and MLP (gpt2 and gpt2-xl widths, B·T = 8192)
    M = shapes["rows"]
    for c in shapes["widths"]:
        for k, n in ((c, 3 * c), (c, 4 * c), (4 * c, c)):
            x, w, b = _rand(rng, M, k), _rand(rng, k, n, scale=k ** -0.5), _rand(rng, n)
            ref = matmul_reference(x.astype(jnp.float32), w.astype(jnp.float32), b.astype(jnp.float32))
            impls = [("pallas", jax.jit(lambda x, w, b: matmul(x, w, b))),
                     ("xla", jax.jit(lambda x, w, b: jnp.dot(x, w) + b))]
            if on_gpu:  # the Mosaic GPU matmul (Hopper), where its tiling fits
                from pallas_kernels.matmul_mgpu import matmul_mgpu
                impls.insert(1, ("pallas_mosaic", jax.jit(lambda x, w, b: matmul_mgpu(x, w, b))))
            for impl, fn in impls:
                try:
                    t = device_time_ms(fn, x, w, b)
                except Exception as e:  # noqa: BLE001 - reported, never fatal
                    SKIPPED.append(f"matmul {impl} {M}x{k}x{n}: n/a ({type(e).__name__}: {str(e)[:160]})")
                    continue
                add("matmul", f"{M}x{k}x{n}", impl, t, 2 * M * k * n / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
                    _err(fn(x, w, b), ref), mm_tf)
        args = (_rand(rng, M, c), _rand(rng, c, 4 * c, scale=c ** -0.5), _rand(rng, 4 * c),
                _rand(rng, 4 * c, c, scale=(4 * c) ** -0.5), _rand(rng, c))
        ref = mlp_reference(*args)
        for m in shapes["mlp_rows"]:
            sub = (args[0][:m],) + args[1:]
            refm = ref[:m]
            for impl, fn in (("pallas fused", jax.jit(lambda *a: mlp(*a, variant="fused"))),
                             ("pallas two_pass", jax.jit(lambda *a: mlp(*a, variant="two_pass"))),
                             ("xla", jax.jit(lambda x, w1, b1, w2, b2: jnp.dot(
                                 jax.nn.gelu(jnp.dot(x, w1) + b1, approximate=True), w2) + b2))):
                try:
                    t = device_time_ms(fn, *sub)
                except Exception as e:  # noqa: BLE001 — e.g. a config over the shared-memory limit
                    SKIPPED.append(f"mlp {impl} {m}x{c}: n/a ({type(e).__name__}: {str(e)[:160]})")
                    continue
                add("mlp", f"{m}x{c}", impl, t, 16 * m * c * c / (t["median_ms"] * 1e-3) / 1e12, "TFLOP/s",
                    _err(fn(*sub), refm), mm_tf)
    return rows


def _xla_decode_attention(q, k, v, lengths):
    from jaxgpt.ops import decode_attention_reference as xla_ref  # what the XLA backend runs
    return xla_ref(q, k, v, lengths)


def _torch_cuda() -> bool:
    """Whether the torch peers can run; says why not in SKIPPED otherwise."""
    try:
        import torch
    except ImportError:
        SKIPPED.append("torch SDPA / F.layer_norm: n/a (torch not installed)")
        return False
    if not torch.cuda.is_available():
        SKIPPED.append("torch SDPA / F.layer_norm: n/a (no CUDA torch)")
    return torch.cuda.is_available()


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
    ap.add_argument("--mode", choices=sorted(SHAPES), default=None, help="full (default), quick, attention, smoke")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    rows = run(args.quick, args.mode)
    print_table(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
