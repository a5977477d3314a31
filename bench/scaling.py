"""Multi-device scaling: data-parallel throughput and tensor-parallel decode latency over 1..N devices.

    python -m bench.scaling [--model gpt2,gpt2-xl] [--dtype bfloat16] [--out DIR] [--smoke]

Data parallel: prefill tokens/s (B = 8 per device, T = 1024) and decode tokens/s (B = 8 per device, 128 new tokens)
at 1, 2, 4, … devices, the batch growing with the device count (weak scaling); efficiency = throughput /
(devices × one device's throughput in the same run). Tensor parallel: gpt2-xl decode ms/token at B = 1 over 1, 2, 4
devices (heads must divide: 25 heads split 1 or 5 ways, so gpt2-xl uses 1 and 5 where 5 devices exist, and gpt2-large
(20 heads) shows 1/2/4). Wall clock around the compiled calls with ``block_until_ready``, median of repeats after a
warm-up (multi-device CUPTI is not summed per device, so wall clock is the honest number here). ``--smoke`` runs a
tiny model on whatever devices exist (CPU: set ``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from jaxgpt import GPTConfig, random_state_dict
from jaxgpt.engine import Engine
from jaxgpt.generate import generate
from jaxgpt.sharding import shard


def _counts(n: int) -> list[int]:
    out, c = [], 1
    while c <= n:
        out.append(c)
        c *= 2
    return out if out[-1] == n else out + [n]


def _median_s(fn, reps: int) -> float:
    fn()  # warm-up (compiles)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def data_parallel(model: str, dtype: str, per_device: int, seq: int, new_tokens: int, reps: int,
                  backend: str = "xla") -> list[dict]:
    cfg = GPTConfig.from_name(model)
    sd = random_state_dict(cfg, seed=0)
    rng = np.random.default_rng(0)
    rows_out = []
    for n in _counts(len(jax.devices())):
        engine = shard(Engine(cfg, sd, dtype=dtype, backend=backend), data=n, devices=jax.devices()[:n]) if n > 1 \
            else Engine(cfg, sd, dtype=dtype, backend=backend)
        batch = per_device * n
        prompts = [rng.integers(0, cfg.vocab_size, size=seq).tolist() for _ in range(batch)]
        t_pre = _median_s(lambda: engine.last_logits(prompts), reps)
        short = [p[:16] for p in prompts]
        t_gen = _median_s(lambda: generate(engine, short, max_new_tokens=new_tokens, stop_at_eos=False), reps)
        rows_out.append({"kind": "data_parallel", "model": model, "backend": backend, "devices": n, "batch": batch,
                         "seq": seq,
                         "prefill_tokens_per_s": batch * seq / t_pre, "prefill_s": t_pre,
                         "decode_tokens_per_s": batch * new_tokens / t_gen, "generate_s": t_gen})
        print(json.dumps(rows_out[-1]), flush=True)
    base = rows_out[0]
    for r in rows_out:
        for k in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            r[k.replace("tokens_per_s", "efficiency")] = r[k] / (r["devices"] * base[k])
    return rows_out


def tensor_parallel(model: str, dtype: str, new_tokens: int, reps: int) -> list[dict]:
    """B=1 decode latency over 1, 2, 4 ... devices; the XLA backend throughout (GSPMD splits the weights; the
    Pallas kernels are per-device code), so the one-device row is the same program unsplit."""
    backend = "xla"
    cfg = GPTConfig.from_name(model)
    sd = random_state_dict(cfg, seed=0)
    prompt = [np.random.default_rng(1).integers(0, cfg.vocab_size, size=16).tolist()]
    rows_out = []
    for n in [c for c in range(1, len(jax.devices()) + 1) if cfg.n_head % c == 0 and c in (1, 2, 4, 5, 8)]:
        engine = shard(Engine(cfg, sd, dtype=dtype, backend=backend), data=1, tensor=n, devices=jax.devices()[:n]) \
            if n > 1 else Engine(cfg, sd, dtype=dtype, backend=backend)
        t = _median_s(lambda: generate(engine, prompt, max_new_tokens=new_tokens, stop_at_eos=False), reps)
        rows_out.append({"kind": "tensor_parallel", "model": model, "backend": backend, "devices": n, "batch": 1,
                         "ms_per_token": 1e3 * t / new_tokens})
        print(json.dumps(rows_out[-1]), flush=True)
    for r in rows_out:
        r["speedup"] = rows_out[0]["ms_per_token"] / r["ms_per_token"]
    return rows_out


def plot(rows: list[dict], out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model in dict.fromkeys(r["model"] for r in rows if r["kind"] == "data_parallel"):
        rs = [r for r in rows if r["kind"] == "data_parallel" and r["model"] == model]
        for key, style in (("prefill_tokens_per_s", "-o"), ("decode_tokens_per_s", "--s")):
            axes[0].plot([r["devices"] for r in rs], [r[key] for r in rs], style, label=f"{model} {key[:7]}")
    axes[0].set(xlabel="devices", ylabel="tokens/s", title="data parallel (weak scaling)")
    axes[0].legend(fontsize=7)
    for model in dict.fromkeys(r["model"] for r in rows if r["kind"] == "tensor_parallel"):
        rs = [r for r in rows if r["kind"] == "tensor_parallel" and r["model"] == model]
        axes[1].plot([r["devices"] for r in rs], [r["ms_per_token"] for r in rs], "-o", label=model)
    axes[1].set(xlabel="devices", ylabel="ms/token (B=1)", title="tensor parallel decode")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{jax.devices()[0].device_kind} × {len(jax.devices())}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)
    return "scaling.png"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scaling")
    ap.add_argument("--model", default="gpt2,gpt2-xl")
    ap.add_argument("--tp-model", default="gpt2-xl,gpt2-large")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--backend", default="xla", choices=["xla", "pallas"], help="data-parallel backend")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a tiny model, short sequences (CPU check)")
    ap.add_argument("--out", default=None, metavar="DIR")
    args = ap.parse_args(argv)
    models, tp_models = args.model.split(","), args.tp_model.split(",")
    per_device, seq, new = 8, 1024, 128
    if args.smoke:
        from bench.run import smoke_model
        models = tp_models = [smoke_model()]
        per_device, seq, new = 2, 32, 4
    rows = [r for m in models for r in data_parallel(m, args.dtype, per_device, seq, new, args.reps, args.backend)]
    rows += [r for m in tp_models for r in tensor_parallel(m, args.dtype, new, args.reps)]
    meta = {"device": jax.devices()[0].device_kind, "device_count": len(jax.devices()), "jax": jax.__version__,
            "dtype": args.dtype, "backend": args.backend, "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
            "method": "wall clock around block_until_ready of the compiled calls, median of reps after a warm-up"}
    print(f"\n{meta['device']} x {meta['device_count']}, {args.dtype}, {args.backend} backend")
    for r in rows:
        if r["kind"] == "data_parallel":
            print(f"DP {r['model']:<10} {r['devices']} dev  prefill {r['prefill_tokens_per_s']:10.0f} tok/s "
                  f"(eff {r['prefill_efficiency']:.2f})  decode {r['decode_tokens_per_s']:9.0f} tok/s "
                  f"(eff {r['decode_efficiency']:.2f})")
        else:
            print(f"TP {r['model']:<10} {r['devices']} dev  {r['ms_per_token']:.3f} ms/token (x{r['speedup']:.2f})")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
        plot(rows, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
