"""One gpt2-xl-sized block's decode step on the one-kernel block (``pallas_kernels.decode_layer``): where its time
goes and which plan knobs pay (GPU only; CUPTI device time, median of 20 after warm-up).

    python -m bench.decode_layer [--model gpt2-xl] [--batch 1] [--cache 512] [--layers 8] [--format bf16|int8]
        [--base '{"prefetch_rows": 0}'] [--quick] [--no-five-call] [--variants JSON] [--out FILE.json]

Every row times a chain of ``--layers`` blocks with distinct weights (as the model runs them: 8 gpt2-xl blocks read
491 MB, ten times the H100's L2, so each block streams its weights from HBM) and reports the time per block; one
block timed alone re-reads weights L2 keeps between repetitions and reads fast (``--layers 1`` shows it).
Rows: the whole kernel; each phase alone inside the one-kernel form (barriers kept); no phase (the launch and the
four barriers alone); the five-call form per phase (launch each); then whole-block variants of the plan
(``--variants``), and without ``--quick`` a per-phase tile sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import device_time_ms, group_kernels, kernel_breakdown, require_gpu
from pallas_kernels.decode_layer import DecodeLayerPlan, LayerWeights, counter_slots, decode_layer, default_programs
from pallas_kernels.partials import SplitK

REPS = 4  # passes over the chain per timed call (the caches' copy into the loop is paid once)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-xl")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cache", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8, help="blocks with distinct weights, chained")
    ap.add_argument("--out", default=None)
    ap.add_argument("--format", default="bf16", choices=("bf16", "int8"),
                    help="the four projections' weights: bf16, or int8 per-channel (jaxgpt.quantize's format)")
    ap.add_argument("--base", default=None, help="JSON plan-field overrides applied to every row's plan")
    ap.add_argument("--no-five-call", action="store_true", help="skip the five-call form's kernel breakdown")
    ap.add_argument("--quick", action="store_true", help="skip the per-phase plan sweep")
    ap.add_argument("--variants", default=None,
                    help='JSON list of plan-field overrides to time whole, e.g. \'[{"num_stages": 5}]\'')
    args = ap.parse_args(argv)
    require_gpu("bench.decode_layer")
    from jaxgpt import GPTConfig
    cfg = GPTConfig.from_name(args.model)
    B, C, H, S = args.batch, cfg.n_embd, cfg.n_head, args.cache
    rng = np.random.default_rng(0)
    n = lambda *shape, s=0.02: jnp.asarray(rng.standard_normal(shape, np.float32) * s, jnp.bfloat16)  # noqa: E731
    L = args.layers
    ws = [LayerWeights(1 + n(C), n(C), n(C, 3 * C), n(3 * C), n(C, C), n(C), 1 + n(C), n(C), n(C, 4 * C), n(4 * C),
                       n(4 * C, C), n(C)) for _ in range(L)]
    if args.format == "int8":
        from pallas_kernels.quant_format import quantize
        q8 = lambda a: quantize(np.asarray(a.astype(jnp.float32)), bits=8)  # noqa: E731
        ws = [w._replace(c_attn_w=q8(w.c_attn_w), c_proj_w=q8(w.c_proj_w), c_fc_w=q8(w.c_fc_w),
                         mlp_proj_w=q8(w.mlp_proj_w)) for w in ws]
        ws = [jax.tree.map(jnp.asarray, w) for w in ws]
    base = DecodeLayerPlan.heuristic(B, C, H, S, default_programs())
    if args.base:
        base = dataclasses.replace(base, **{f: tuple(v) if isinstance(v, list) else v
                                            for f, v in json.loads(args.base).items()})
    kcs, vcs = [n(B, S, H, C // H, s=1.0) for _ in range(L)], [n(B, S, H, C // H, s=1.0) for _ in range(L)]
    pos = jnp.full((B,), S // 2, jnp.int32)
    w = ws[0]
    wbytes = sum(x.nbytes for x in (w.c_attn_w, w.c_proj_w, w.c_fc_w, w.mlp_proj_w))

    def timed(plan, fused=True, phases=None):
        def chain(r, p, kcs, vcs):  # REPS passes over the L blocks in one loop, caches carried (updated in place)
            def body(_, carry):
                r, p, kcs, vcs = carry
                kcs, vcs, cnt = list(kcs), list(vcs), jnp.zeros((L * counter_slots(B, H),), jnp.int32)
                for i in range(L):
                    r, p, kcs[i], vcs[i], cnt = decode_layer(r, p, ws[i], kcs[i], vcs[i], pos, cnt,
                                                             jnp.full((1,), i, jnp.int32), eps=1e-5, n_head=H,
                                                             plan=plan, fused=fused, phases=phases)
                return r, p, kcs, vcs
            return jax.lax.fori_loop(0, REPS, body, (r, p, kcs, vcs))[:2]
        mlp_in = SplitK(jnp.asarray(rng.standard_normal((plan.out[2], B, C), np.float32)), n(C), "none",
                        jnp.dtype(jnp.bfloat16))
        return jax.jit(chain), (n(B, C, s=1.0), mlp_in, kcs, vcs)

    rows = []

    def record(name, plan, **kw):
        try:
            f, a = timed(plan, **kw)
            t = device_time_ms(f, *a)["median_ms"] * 1e3 / (L * REPS)  # per block
            rows.append({"case": name, "us": t, "plan": dataclasses.asdict(plan)})
            print(f"{name:<40} {t:8.1f} us" + (f"  {wbytes / t / 1e3:6.0f} GB/s" if name.startswith("all") else ""),
                  flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append({"case": name, "error": repr(e)[:300]})
            print(f"{name:<40} failed: {repr(e)[:200]}", flush=True)
        if args.out:
            json.dump({"device": jax.devices()[0].device_kind, "model": args.model, "format": args.format,
                       "batch": B, "cache": S, "layers": L, "rows": rows}, open(args.out, "w"), indent=1)

    print(f"{args.model} {args.format} B={B} cache={S} layers={L} (times per block) {base}")
    record("warm-up (the first timing of a run reads ~10% high)", base)
    record("all phases (one kernel)", base)
    record("no phase (launch + barriers)", base, phases=())
    for p, name in enumerate(("c_attn", "attention", "attn.c_proj", "c_fc", "mlp.c_proj")):
        record(f"only {name}", base, phases=(p,))
    if not args.no_five_call:
        f, a = timed(base, fused=False)
        for name, count, ms in group_kernels(kernel_breakdown(f, *a)):
            print(f"  five-call form: {name:<36} {ms * 1e3 / (L * REPS):8.1f} us a block "
                  f"({count // (L * REPS)} a block)")
    variants = json.loads(args.variants) if args.variants else [{"prefetch_rows": 0}, {"att_block": 128}]
    for kw in variants:  # (JSON lists as the plan's tuples)
        record(f"all, {kw}", dataclasses.replace(base, **{f: tuple(v) if isinstance(v, list) else v
                                                           for f, v in kw.items()}))
    if args.quick:
        return 0
    # Each matmul phase alone (barriers kept) over (block_n, block_k, split) choices that give 0.75-2.2 items a
    # program; the best of each phase, together, last.
    best = {}
    for p, field, n_out, k_in in ((0, "qkv", 3 * C, C), (3, "fc", 4 * C, C), (4, "out", C, 4 * C)):
        for choice in _choices(n_out, k_in, base.programs):
            plan = dataclasses.replace(base, **{field: choice})
            record(f"only {field} {choice}", plan, phases=(p,))
            t = rows[-1].get("us")
            if t is not None and (field not in best or t < best[field][0]):
                best[field] = (t, choice)
    if best:
        record(f"all, best phases {[v[1] for v in best.values()]}",
               dataclasses.replace(base, **{f: v[1] for f, v in best.items()}))
    return 0


def _choices(n: int, k: int, programs: int, per: int = 2) -> list[tuple[int, int, int]]:
    out = []
    for bn in (64, 128):
        for bk in (64, 128):
            nb, ks = -(-n // bn), -(-k // bk)
            fits = [s for s in range(1, ks + 1) if 0.75 * programs <= nb * s <= 2.2 * programs
                    and -(-ks // -(-ks // s)) == s]
            out += [(bn, bk, s) for s in fits[:per]]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
