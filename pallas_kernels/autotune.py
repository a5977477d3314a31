"""Autotune the kernels' block sizes on the GPU at hand and write ``tuning_tables/<gpu>.json``.

    python -m pallas_kernels.autotune [--models gpt2,gpt2-xl] [--batch 8] [--seq 1024] [--dtype bfloat16]
    python -m pallas_kernels.autotune --decode [--decode-batches 1,8] [--cache 512]   # generation's shapes

For each GPT-2 shape of a prefill at (batch, seq), every candidate config is compiled and timed in device time
(CUPTI); configs that fail to compile (shared-memory or register limits) are skipped. The winners are merged into the
table that ``tuning.lookup`` reads, so later calls at these shapes use them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import tuning
from pallas_kernels.decode_attention import decode_attention
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.layer_norm import add_layer_norm
from pallas_kernels.matmul import matmul
from pallas_kernels.mlp import fused_mlp, mlp


# (n_embd, n_head) of the presets; pallas_kernels does not import jaxgpt's config.
WIDTH_HEADS = {"gpt2": (768, 12), "gpt2-medium": (1024, 16), "gpt2-large": (1280, 20), "gpt2-xl": (1600, 25)}


def _tune_projections(table: dict, c: int, m: int, rand, dtype) -> None:
    """The four GPT-2 projections of width ``c`` at ``m`` rows (split-K candidates at decode-sized m)."""
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


def autotune_decode(models, batches, cache, dtype) -> dict:
    """Decode shapes: the split-K projections at M = batch rows and flash-decoding over a cache of ``cache`` slots."""
    rng = np.random.default_rng(0)
    rand = lambda *s: jnp.asarray(rng.standard_normal(s) * 0.05, dtype)  # noqa: E731
    table: dict = {}
    for name in models:
        c, h = WIDTH_HEADS[name]
        for m in batches:
            _tune_projections(table, c, m, rand, dtype)
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
    args = ap.parse_args(argv)
    gpu = tuning.gpu_name()
    if gpu is None:
        raise SystemExit("error: autotune needs a GPU")
    if args.decode:
        new = autotune_decode(args.models.split(","), [int(b) for b in args.decode_batches.split(",")], args.cache,
                              args.dtype)
    else:
        new = autotune(args.models.split(","), args.batch, args.seq, args.dtype)
    path = args.out or str(tuning.TABLES / f"{gpu}.json")
    try:
        with open(path) as f:
            table = json.load(f)
    except FileNotFoundError:
        table = {}
    for k, v in new.items():
        table.setdefault(k, {}).update(v)
    tuning.TABLES.mkdir(exist_ok=True)
    with open(path, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
