"""The Mosaic GPU attention's launch configs at GPT-2's prefill attention shapes (``SHAPES``), against cuDNN and
tokamax's Mosaic kernel (GPU).

    python -m bench.attention_sweep --out attention_sweep.json [--table T.json] [--variants JSON] [--shapes ...]

Every config of ``flash_attention_mgpu`` (KV block, pipeline stages, launch order), under each of ``--variants`` (a
JSON list of extra keyword sets for experimental knobs while they exist; default ``[{}]``), is compiled (in threads)
and timed in CUPTI device time, median of 20, with the peers in the same process; ``--table`` records each shape's
winner as ``MosaicAttentionConfig`` for ``pallas_kernels.tuning.lookup``. Results are written after every shape;
``python -m bench.attention_table`` summarises them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench.kernels import peers_attention
from bench.timing import device_time_ms, require_gpu
from pallas_kernels import tuning
from pallas_kernels.flash_attention import flash_attention, flash_attention_reference
from pallas_kernels.flash_attention_mgpu import flash_attention_mgpu

SHAPES = [(8, 1024, 12), (8, 1024, 25), (4, 4096, 12), (1, 1024, 12), (8, 128, 12), (1, 128, 12)]
CONFIGS = [(128, 2, "batch_outer"), (256, 2, "batch_outer"), (64, 2, "batch_outer"), (128, 3, "batch_outer"),
           (128, 2, "tiles_outer"), (256, 2, "tiles_outer")]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.attention_sweep")
    ap.add_argument("--out", default="attention_sweep.json")
    ap.add_argument("--table", default=None)
    ap.add_argument("--variants", default="[{}]", help="JSON list of flash_attention_mgpu keyword sets")
    ap.add_argument("--configs", default=None, help="comma list like kv128s2,kv256s3 (batch_outer); default: all")
    ap.add_argument("--shapes", default=None, help="comma list like 8x1024x12,1x1024x12; default: GPT-2's (SHAPES)")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args(argv)
    variants = json.loads(args.variants)
    shapes = SHAPES if args.shapes is None else [tuple(int(v) for v in c.split("x")) for c in args.shapes.split(",")]
    configs = CONFIGS if args.configs is None else [
        (int(c[2:].split("s")[0]), int(c.split("s")[1]), "batch_outer") for c in args.configs.split(",")]
    require_gpu("bench.attention_sweep")
    rng = np.random.default_rng(0)
    peers = {} if args.no_peers else peers_attention()
    results = []
    for B, T, H in shapes:
        qkv = jnp.asarray(rng.standard_normal((B, T, 3, H, 64), dtype=np.float32), jnp.bfloat16)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        ref = flash_attention_reference(qkv.astype(jnp.float32))
        flops = 2 * B * H * T * T * 64
        cfgs = [(*c, vi) for vi in range(len(variants)) for c in configs if c[0] <= max(128, T)]

        def build(c):
            try:
                f = jax.jit(lambda x, c=c: flash_attention_mgpu(x, block_kv=c[0], stages=c[1], order=c[2],
                                                                **variants[c[3]]))
                return f.lower(qkv).compile()
            except Exception as e:  # noqa: BLE001
                print(f"  mosaic {c} B{B} T{T} H{H}: failed ({type(e).__name__}: {str(e)[:120]})", flush=True)
                return None

        def label(c):
            v = variants[c[3]]
            tag = "+".join(k if val is True else f"{k}={val}" for k, val in sorted(v.items()))
            return f"mosaic kv{c[0]} s{c[1]} {c[2]}" + (f" {tag}" if tag else "")

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            built = list(pool.map(build, cfgs))
        row = {"case": f"B{B} T{T} H{H}", "flops": flops, "impls": {}}

        def add(name, fn, *a):
            try:
                t = device_time_ms(fn, *a)["median_ms"]
                err = float(jnp.max(jnp.abs(fn(*a).astype(jnp.float32) - ref)))
                row["impls"][name] = {"us": t * 1e3, "tflops": flops / (t * 1e-3) / 1e12, "max_err": err}
            except Exception as e:  # noqa: BLE001
                row["impls"][name] = {"error": f"{type(e).__name__}: {str(e)[:160]}"}

        for c, f in zip(cfgs, built):
            if f is not None:
                add(label(c), f, qkv)
        if not args.no_peers:
            add("triton (ours)", jax.jit(flash_attention), qkv)
        for name, pfn in peers.items():
            add(name, jax.jit(pfn), q, k, v)
        results.append(row)
        ok = {n: r for n, r in row["impls"].items() if "us" in r}
        best = min((n for n in ok if n.startswith("mosaic")), key=lambda n: ok[n]["us"], default=None)
        line = "  ".join(f"{n}={r['us']:.1f}" for n, r in sorted(ok.items(), key=lambda kv: kv[1]["us"]))
        print(f"{row['case']}: {line}", flush=True)
        with open(args.out, "w") as fh:
            json.dump({"device": jax.devices()[0].device_kind, "rows": results}, fh, indent=1)
        if args.table and best and len(best.split()) == 4:  # tables record configs of the default variant only
            kv_, st, order = best.split()[1:]
            key = tuning.shape_key(seq=T, heads=H, head_dim=64, batch=B, dtype=jnp.bfloat16)
            tuning.merge_into_table(args.table, {"MosaicAttentionConfig": {
                key: {"block_kv": int(kv_[2:]), "stages": int(st[1:]), "order": order}}})


if __name__ == "__main__":
    main()
