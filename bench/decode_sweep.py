"""Decode-sized projections at HBM speed: every split-K tile config timed on weights that do not fit in L2 (GPU).

    python -m bench.decode_sweep --model gpt2-xl --rows 1 --formats bf16,int8,int4 --out sweep.json [--table T.json]

A single (1600, 6400) bf16 weight (20 MB) stays in the H100's 50 MB L2 between timing repetitions, so a
micro-benchmark of one weight measures L2, not HBM (session 3's "2923 GB/s" decode matmul was that). Here each
candidate runs over enough distinct copies of the weight (>= 160 MB) in one jitted call; the time of a config is
the median CUPTI time of its matmul kernels (the split-K epilogue XLA adds in the quantized path is not counted:
the model finishes partials in the next kernel). The table (``--table``) gets each shape's winner, in the format
``pallas_kernels.tuning.lookup`` reads. Results are written after every shape.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import tuning
from pallas_kernels.matmul import matmul_split_k
from pallas_kernels.partials import SplitK
from pallas_kernels.quant_matmul import quant_matmul, quantize

WIDTH = {"gpt2": 768, "gpt2-medium": 1024, "gpt2-large": 1280, "gpt2-xl": 1600}
L2_BYTES = 160 * 2**20


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


def sweep(model: str, rows: int, fmt: str, max_configs: int, log) -> dict:
    c = WIDTH[model]
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
        bits = {} if fmt == "bf16" else {"bits": int(fmt[3:])}
        key = tuning.shape_key(m=rows, n=n, k=k, dtype=jnp.bfloat16, **bits)
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


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.decode_sweep")
    ap.add_argument("--model", default="gpt2-xl")
    ap.add_argument("--rows", default="1")
    ap.add_argument("--formats", default="bf16,int8,int4")
    ap.add_argument("--max-configs", type=int, default=200)
    ap.add_argument("--out", default="decode_sweep.json")
    ap.add_argument("--table", default=None, help="merge each shape's winner into this tuning table")
    args = ap.parse_args(argv)
    if jax.default_backend() != "gpu":
        raise SystemExit("error: the decode sweep needs a GPU")
    log = lambda s: print(s, flush=True)  # noqa: E731
    results: dict = {}
    for model in args.model.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            for fmt in args.formats.split(","):
                res = sweep(model, rows, fmt, args.max_configs, log)
                results[f"{model},m={rows},{fmt}"] = res
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
                if args.table:
                    try:
                        with open(args.table) as f:
                            table = json.load(f)
                    except FileNotFoundError:
                        table = {}
                    for r in res.values():
                        if r["best"]:
                            best = {k: v for k, v in r["best"][0].items() if k not in ("us", "gbs")}
                            table.setdefault(r["class"], {})[r["key"]] = best
                    with open(args.table, "w") as f:
                        json.dump(table, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
