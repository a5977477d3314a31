"""Autotune the kernels' block sizes on the GPU at hand and write ``tuning_tables/<gpu>.json``.

    python -m pallas_kernels.autotune [--models gpt2,gpt2-xl] [--batch 8] [--seq 1024] [--dtype bfloat16]
    python -m pallas_kernels.autotune --decode [--decode-batches 1,8] [--cache 512] [--formats bf16,int8,int4]

For each GPT-2 shape of a prefill at (batch, seq), every candidate config is compiled and timed in device time
(CUPTI); configs that fail to compile (shared-memory or register limits) are skipped. The winners are merged into the
table that ``tuning.lookup`` reads, so later calls at these shapes use them.

Decode-sized projections are timed on weights that live in HBM: one (1600, 6400) bf16 weight (20 MB) stays in the
H100's 50 MB L2 between timing repetitions, so timing it alone measures L2 (2026-11-25's "2923 GB/s" decode matmul
was that; in the model the product took 1.8× as long). ``sweep_decode`` runs each candidate over enough distinct
copies of the weight (>= 160 MB) in one jitted call, compiles the candidates in threads, and takes the median CUPTI
time of the matmul kernels (the XLA epilogue of the quantized path is not counted: the model finishes partials in
the next kernel). ``python -m bench.decode_sweep`` is the same sweep with its full results as JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import tuning
from pallas_kernels.decode_attention import decode_attention
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.layer_norm import add_layer_norm
from pallas_kernels.matmul import matmul, matmul_split_k
from pallas_kernels.mlp import fused_mlp, mlp
from pallas_kernels.partials import SplitK
from pallas_kernels.quant_matmul import quant_matmul
from pallas_kernels.quant_format import quantize


# (n_embd, n_head) of the presets; pallas_kernels does not import jaxgpt's config.
WIDTH_HEADS = {"gpt2": (768, 12), "gpt2-medium": (1024, 16), "gpt2-large": (1280, 20), "gpt2-xl": (1600, 25)}
L2_BYTES = 160 * 2**20  # decode weights are timed over at least this many bytes of copies (H100 L2: 50 MB)


def _tune_projections(table: dict, c: int, m: int, rand, dtype) -> None:
    """The four GPT-2 projections of width ``c`` at prefill-sized ``m`` rows (decode sizes: ``sweep_decode``)."""
    for k, n in ((c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)):
        xm, wm, bm = rand(m, k), rand(k, n), rand(n)
        key = tuning.shape_key(m=m, n=n, k=k, dtype=dtype)
        got = _best(f"matmul {key}", tuning.MatmulConfig.candidates(m, n, k, dtype),
                    lambda cfg: (jax.jit(lambda x, w, b, cfg=cfg: matmul(
                        x, w, b, block_m=cfg.block_m, block_n=cfg.block_n, block_k=cfg.block_k,
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages, split_k=cfg.split_k)), (xm, wm, bm)))
        if got:
            table.setdefault("MatmulConfig", {})[key] = dataclasses.asdict(got[0])


def _time(fn, *args, iterations=10) -> float:
    from jax.experimental.mosaic.gpu import profiler
    jax.block_until_ready(fn(*args))
    _, times = profiler.measure(fn, iterations=iterations)(*args)
    return statistics.median(times)


def _best(label, candidates, make):
    best = None
    for cfg in candidates:
        try:
            fn, args = make(cfg)
            ms = _time(fn, *args)
        except Exception as e:  # noqa: BLE001 — a config that does not compile is simply not a candidate
            print(f"  {label} {cfg}: failed ({type(e).__name__})")
            continue
        if best is None or ms < best[1]:
            best = (cfg, ms)
    if best:
        print(f"  {label}: {best[0]} {best[1] * 1e3:.1f} us")
    return best


def autotune(models, batch, seq, dtype) -> dict:
    rng = np.random.default_rng(0)
    rand = lambda *s: jnp.asarray(rng.standard_normal(s) * 0.05, dtype)  # noqa: E731
    table: dict = {}
    rows = batch * seq
    for name in models:
        c, h = WIDTH_HEADS[name]
        x, r, w, b = rand(rows, c), rand(rows, c), rand(c) + 1, rand(c)
        key = tuning.shape_key(rows=rows, cols=c, dtype=dtype)
        got = _best(f"layer_norm {key}", tuning.LayerNormConfig.candidates(rows, c, dtype),
                    lambda cfg: (jax.jit(lambda x, r, w, b, cfg=cfg: add_layer_norm(
                        x, r, w, b, block_rows=cfg.block_rows, num_warps=cfg.num_warps)), (x, r, w, b)))
        if got:
            table.setdefault("LayerNormConfig", {})[key] = dataclasses.asdict(got[0])
        _tune_projections(table, c, rows, rand, dtype)
        qkv = rand(batch, seq, 3, h, 64) * 20
        key = tuning.shape_key(seq=seq, heads=h, head_dim=64, batch=batch, dtype=dtype)
        got = _best(f"attention {key}", tuning.AttentionConfig.candidates(seq, h, 64, batch, dtype),
                    lambda cfg: (jax.jit(lambda q, cfg=cfg: flash_attention(
                        q, block_q=cfg.block_q, block_k=cfg.block_k, num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages)), (qkv,)))
        if got:
            table.setdefault("AttentionConfig", {})[key] = dataclasses.asdict(got[0])
        # MLP: the best fused config against the two-pass composition (with the matmul winners just found).
        tuning.load_table.cache_clear()
        args = (rand(rows, c), rand(c, 4 * c), rand(4 * c), rand(4 * c, c), rand(c))
        key = tuning.shape_key(m=rows, c=c, dtype=dtype)
        fused = _best(f"fused_mlp {key}", tuning.MlpConfig.candidates(rows, c, dtype),
                      lambda cfg: (jax.jit(lambda *a, cfg=cfg: fused_mlp(
                          *a, block_m=cfg.block_m, block_h=cfg.block_h, num_warps=cfg.num_warps,
                          num_stages=cfg.num_stages)), args))
        two = _best(f"two_pass_mlp {key}", [None], lambda _: (jax.jit(lambda *a: mlp(*a, variant="two_pass")), args))
        if fused:
            table.setdefault("MlpConfig", {})[key] = dataclasses.asdict(fused[0])
        if fused or two:
            win = "fused" if fused and (not two or fused[1] < two[1]) else "two_pass"
            table.setdefault("mlp_variant", {})[key] = win
    return table


def _kernel_us(fn, args, reps: int = 5) -> float:
    """Median µs of the kernels whose name starts with ``jaxgpt`` in one call of ``fn``, over ``reps`` calls."""
    from jax.experimental.mosaic.gpu import profiler
    jax.block_until_ready(fn(*args))
    _, runs = profiler.measure(fn, aggregate=False, iterations=reps)(*args)
    times = [ms for run in runs for name, ms in run if name.startswith("jaxgpt")]
    return statistics.median(times) * 1e3


def _shapes(c: int):
    """GPT-2's four projections at width c: (name, K, N, activation)."""
    return [("c_attn", c, 3 * c, "none"), ("attn.c_proj", c, c, "none"), ("c_fc", c, 4 * c, "gelu_tanh"),
            ("mlp.c_proj", 4 * c, c, "none")]


def sweep_decode(model: str, rows: int, fmt: str, max_configs: int = 200, log=print) -> dict:
    """Every decode-sized split-K config of ``model``'s four projections in ``fmt`` (bf16, int8, int4) at M = ``rows``,
    timed on weights resident in HBM (module docstring); per shape: the table key, the heuristic's time and the best
    eight, fastest first."""
    c = WIDTH_HEADS[model][0]
    fused = rows > 1 or c >= 1024  # as jaxgpt.ops_pallas._fused picks the decode step
    rng = np.random.default_rng(0)
    out = {}
    for name, k, n, act in _shapes(c):
        w_bytes = k * n * {"bf16": 2, "int8": 1, "int4": 0.5}[fmt]
        copies = int(max(3, min(32, -(-L2_BYTES // w_bytes))))
        x = jnp.asarray(rng.standard_normal((rows, k)) * 0.5, jnp.bfloat16)
        if fmt == "bf16" and name == "mlp.c_proj" and fused:  # the fused decode step: c_fc's partials, finished on load
            s_prev = out["c_fc"]["best"][0]["split_k"] if out.get("c_fc", {}).get("best") else 3
            x = SplitK(jnp.asarray(rng.standard_normal((s_prev, rows, k)) * 0.3, jnp.float32),
                       jnp.asarray(rng.standard_normal(k) * 0.05, jnp.bfloat16), "gelu_tanh", jnp.dtype(jnp.bfloat16))
        b = jnp.asarray(rng.standard_normal(n) * 0.05, jnp.bfloat16)
        w0 = rng.standard_normal((k, n)).astype(np.float32) * 0.02
        if fmt == "bf16":
            ws = [jnp.asarray(w0 * (1 + 0.01 * i), jnp.bfloat16) for i in range(copies)]
            cls, cands = tuning.MatmulConfig, tuning.MatmulConfig.candidates(rows, n, k, jnp.bfloat16)
            base = tuning.MatmulConfig.heuristic(rows, n, k, jnp.bfloat16)
        else:
            bits = 8 if fmt == "int8" else 4
            q = quantize(w0, bits=bits)
            ws = [dataclasses.replace(q, q=jnp.asarray(q.q), scale=jnp.asarray(q.scale)) for _ in range(copies)]
            cls = tuning.QuantMatmulConfig
            cands = cls.candidates(rows, n, k, bits, jnp.bfloat16)
            base = cls.heuristic(rows, n, k, bits, jnp.bfloat16)
        cands = ([base] + [cfg for cfg in cands if cfg != base])[:max_configs]  # the heuristic always runs

        def make(cfg):
            kw = dict(block_n=cfg.block_n, split_k=cfg.split_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            if fmt == "bf16":
                kw["block_k"] = cfg.block_k
                return jax.jit(lambda x, ws, b: [matmul_split_k(x, w, b, activation=act, **kw).parts for w in ws])
            if fmt == "int8":
                kw["block_k"] = cfg.block_k
            return jax.jit(lambda x, ws, b: [quant_matmul(x, w, b, activation=act, block_m=16, **kw) for w in ws])

        t0 = time.perf_counter()

        def build(cfg):  # compiled in threads: Triton's and XLA's compilers release the GIL
            try:
                return make(cfg).lower(x, ws, b).compile()
            except Exception as e:  # noqa: BLE001 — a config that does not compile is not a candidate
                log(f"  {fmt} {name} {cfg}: failed ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
                return None

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            built = list(pool.map(build, cands))
        results = []
        for cfg, fn in zip(cands, built):
            if fn is None:
                continue
            try:
                results.append((_kernel_us(fn, (x, ws, b)), cfg))
            except Exception as e:  # noqa: BLE001
                log(f"  {fmt} {name} {cfg}: failed to run ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
        results.sort(key=lambda r: r[0])
        base_us = next((us for us, cfg in results if cfg == base), None)
        key_bits = {} if fmt == "bf16" else {"bits": int(fmt[3:])}
        key = tuning.shape_key(m=rows, n=n, k=k, dtype=jnp.bfloat16, **key_bits)
        gbs = lambda us: w_bytes / (us * 1e-6) / 1e9  # noqa: E731
        out[name] = {"key": key, "class": cls.__name__, "k": k, "n": n, "weight_bytes": w_bytes, "copies": copies,
                     "heuristic": dataclasses.asdict(base), "heuristic_us": base_us,
                     "x": "SplitK partials" if isinstance(x, SplitK) else "array",
                     "best": [{"us": us, "gbs": gbs(us), **dataclasses.asdict(cfg)} for us, cfg in results[:8]],
                     "tried": len(results), "seconds": time.perf_counter() - t0}
        if results:
            us, cfg = results[0]
            log(f"{model} {fmt} {name:11s} M={rows} K={k} N={n}: best {us:6.1f} us {gbs(us):5.0f} GB/s {cfg}; "
                f"heuristic {base_us and round(base_us, 1)} us; {len(results)} configs in {time.perf_counter() - t0:.0f} s")
    return out


def sweep_winners(result: dict) -> dict:
    """``sweep_decode``'s fastest config per shape, as table entries: {config class name: {shape key: fields}}."""
    out: dict = {}
    for r in result.values():
        if r["best"]:
            out.setdefault(r["class"], {})[r["key"]] = {k: v for k, v in r["best"][0].items() if k not in ("us", "gbs")}
    return out


def autotune_decode(models, batches, cache, dtype, formats=("bf16",)) -> dict:
    """Decode shapes: the split-K projections at M = batch rows in each weight format (``sweep_decode``, bf16
    activations) and flash-decoding over a cache of ``cache`` slots."""
    rng = np.random.default_rng(0)
    rand = lambda *s: jnp.asarray(rng.standard_normal(s) * 0.05, dtype)  # noqa: E731
    table: dict = {}
    for name in models:
        c, h = WIDTH_HEADS[name]
        for m in batches:
            for fmt in formats:
                for cls_name, entries in sweep_winners(sweep_decode(name, m, fmt)).items():
                    table.setdefault(cls_name, {}).update(entries)
            q, kc, vc = rand(m, h, 64), rand(m, cache, h, 64), rand(m, cache, h, 64)
            lengths = jnp.full((m,), cache, jnp.int32)
            key = tuning.shape_key(batch=m, heads=h, cache=cache, head_dim=64, dtype=dtype)
            got = _best(f"decode_attention {key}",
                        tuning.DecodeAttentionConfig.candidates(m, h, cache, 64, dtype),
                        lambda cfg: (jax.jit(lambda q, k, v, n, cfg=cfg: decode_attention(
                            q, k, v, n, block_k=cfg.block_k, num_splits=cfg.num_splits, num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages)), (q, kc, vc, lengths)))
            if got:
                table.setdefault("DecodeAttentionConfig", {})[key] = dataclasses.asdict(got[0])
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pallas_kernels.autotune")
    ap.add_argument("--models", default="gpt2,gpt2-xl")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=None, help="default: tuning_tables/<gpu>.json (merged)")
    ap.add_argument("--decode", action="store_true", help="tune generation's shapes instead of the prefill's")
    ap.add_argument("--decode-batches", default="1,8")
    ap.add_argument("--cache", type=int, default=512, help="cache slots for decode attention (default 512)")
    ap.add_argument("--formats", default="bf16", help="decode weight formats to tune: bf16,int8,int4")
    args = ap.parse_args(argv)
    gpu = tuning.gpu_name()
    if gpu is None:
        raise SystemExit("error: autotune needs a GPU")
    if args.decode:
        new = autotune_decode(args.models.split(","), [int(b) for b in args.decode_batches.split(",")], args.cache,
                              args.dtype, args.formats.split(","))
    else:
        new = autotune(args.models.split(","), args.batch, args.seq, args.dtype)
    path = args.out or str(tuning.TABLES / f"{gpu}.json")
    tuning.merge_into_table(path, new)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
