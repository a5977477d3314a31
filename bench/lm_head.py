"""The decode step's ln_f + LM head: two kernels (residual+LayerNorm, XLA's cuBLAS product) against
``lm_head_decode`` (one kernel), at GPT-2's shapes.

    python -m bench.lm_head [--model gpt2,gpt2-xl] [--batch 1,8] [--head bf16,int8] [--plans JSON] [--out F]

``--head int8`` times the int8 head (``jaxgpt quantize --lm-head``, held (V, C) like wte): its two-kernel path
(residual+LayerNorm, XLA's product with the int8 operand) against the fused kernel; GB/s then counts the int8 values
and their scales.

Method: CUPTI device time (bench.timing.device_time_ms), median of 30 after warm-up; random inputs (the last
block's residual, 8 MLP partials, ln_f, wte in bf16). wte (77-161 MB) exceeds the 50 MB L2, so every call streams
it from HBM. GB/s counts wte's bytes only.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import device_time_ms, require_gpu
from jaxgpt import GPTConfig
from jaxgpt.ops import XlaOps
from pallas_kernels.decode_layer import default_programs
from pallas_kernels.layer_norm import add_layer_norm
from pallas_kernels.lm_head import LMHeadPlan, lm_head_decode
from pallas_kernels.partials import SplitK
from pallas_kernels.quant_format import head_from_copy, quantize

PLANS = [{}, {"flat": True, "block_k": 128}, {"flat": True, "block_n": 64, "block_k": 256},
         {"flat": True, "block_n": 32, "block_k": 512}, {"flat": True, "block_n": 32, "block_k": 256},
         {"flat": True, "block_n": 64, "block_k": 128}, {"flat": True, "block_n": 16, "block_k": 1024},
         {"flat": True, "block_n": 64, "block_k": 256, "num_stages": 3}]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2,gpt2-xl")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--head", default="bf16", help="bf16 (wte) and/or int8 (the int8 head copy), comma list")
    ap.add_argument("--plans", default=None, help="JSON list of LMHeadPlan overrides (default: a small sweep)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    require_gpu("bench.lm_head")
    plans = json.loads(args.plans) if args.plans else PLANS
    rows = []
    for model in args.model.split(","):
        cfg = GPTConfig.from_name(model)
        C, V = cfg.n_embd, cfg.vocab_size
        for B in map(int, args.batch.split(",")):
            rng = np.random.default_rng(0)
            bf = lambda *s, scale=1.0: jnp.asarray(rng.standard_normal(s) * scale, jnp.bfloat16)  # noqa: E731
            r, w, b, wte = bf(B, C), bf(C, scale=0.1) + 1, bf(C, scale=0.1), bf(V, C, scale=0.02)
            parts = SplitK(jnp.asarray(rng.standard_normal((8, B, C)), jnp.float32), bf(C, scale=0.1), "none",
                           jnp.dtype(jnp.bfloat16))
            two = jax.jit(lambda r, p, w, b, h: XlaOps.lm_head(add_layer_norm(p, r, w, b, eps=1e-5)[1], h))
            for kind in args.head.split(","):
                if kind == "int8":
                    copy = quantize(np.asarray(wte, np.float32).T, bits=8)  # the checkpoint's (C, V) copy
                    head = jax.tree.map(jnp.asarray, head_from_copy(copy.q, copy.scale))  # held (V, C)
                    nbytes = head.q.nbytes + head.scale.nbytes
                    label = "two kernels (ln_f + XLA int8 dot)"
                else:
                    head, nbytes = wte, wte.nbytes
                    label = "two kernels (ln_f + XLA dot)"
                ref = np.asarray(two(r, parts, w, b, head))
                cases = [(label, two, None)]
                for o in plans:
                    plan = LMHeadPlan(**{"programs": default_programs(), **o})
                    cases.append((f"fused {o or 'default'}", jax.jit(
                        lambda r, p, w, b, h, plan=plan: lm_head_decode(r, p, w, b, h, eps=1e-5, plan=plan)), plan))
                for name, fn, plan in cases:
                    try:
                        got = np.asarray(fn(r, parts, w, b, head))
                        t = device_time_ms(fn, r, parts, w, b, head, iterations=30, warmup=3)
                        err = float(np.abs(got - ref).max())
                        rows.append({"model": model, "B": B, "head": kind, "case": name, "us": t["median_ms"] * 1e3,
                                     "gbs": nbytes / (t["median_ms"] * 1e-3) / 1e9, "max_err_vs_two": err,
                                     "method": t["method"]})
                    except Exception as e:  # noqa: BLE001 - a failing plan is reported, the others still run
                        rows.append({"model": model, "B": B, "head": kind, "case": name, "error": repr(e)[:200]})
                    print(json.dumps(rows[-1]), flush=True)
    print(f"\nln_f + LM head, bf16 activations, {jax.devices()[0].device_kind}; CUPTI device time, median of 30")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<8} B{r['B']} {r['head']:<4} {r['case'][:60]:<60} ERROR {r['error'][:60]}")
        else:
            print(f"{r['model']:<8} B{r['B']} {r['head']:<4} {r['case'][:60]:<60} {r['us']:8.1f} us "
                  f"{r['gbs']:7.0f} GB/s err {r['max_err_vs_two']:.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
