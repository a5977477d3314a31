"""``python -m jaxgpt bench [kernels|model|all]``: kernels and whole model against XLA and the peers.

Writes ``results.json`` (environment, method, rows), ``results.md`` (a table per case) and plots (``kernels.png``,
``model.png``) into ``--out``. On a GPU the times are CUPTI device time for JAX (warm-up, median of repeats) and
CUDA events or wall clock with synchronisation for torch, as each row's ``method`` says. On a CPU it runs a tiny
smoke version (Pallas in interpret mode, a 2-layer model) that checks the plumbing and says so: its numbers are not
performance.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax

SCHEMA_VERSION = 1
SMOKE_NOTE = "CPU smoke run: tiny shapes, Pallas in interpret mode; the numbers say nothing about speed"


def environment(dtype: str, mode: str) -> dict:
    """What produced the numbers: device, driver, library versions, dtype, date."""
    env = {"schema": SCHEMA_VERSION, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "mode": mode, "dtype": dtype, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
           "device_count": len(jax.devices()), "python": platform.python_version(), "jax": jax.__version__}
    try:
        import jaxlib
        env["jaxlib"] = jaxlib.__version__
    except ImportError:
        env["jaxlib"] = None
    for name in ("flax", "torch", "transformers", "tokamax"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 — optional peers
            env[name] = None
    env["driver"] = None
    if env["backend"] == "gpu":
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return env


# ------------------------------------------------------------------------------------------------- model cases

def model_rows(models: list[str], dtype: str, mode: str, skipped: list[str], on_row=None,
               quantize: tuple[str, ...] = ()) -> list[dict]:
    """Prefill (B=1/8, T=128/1024) and decode (B=1/8) for the XLA and Pallas backends and HF transformers.

    ``quantize`` adds each weight format (``int8``, ``int4``, ``int8+head``...) as further jaxgpt rows
    (``jaxgpt-pallas-int8``...). The ``torch.compile`` peers run last (their compiles take minutes), and ``on_row``
    sees the rows so far after every case, so a run cut short still leaves every finished row on disk."""
    from bench.decode import hf_case, jax_case
    from bench.prefill import prefill_case
    smoke = mode == "smoke"
    rows: list[dict] = []
    prefill_shapes = [(2, 16)] if smoke else ([(8, 1024)] if mode == "quick" else
                                                       [(1, 128), (8, 128), (1, 1024), (8, 1024)])
    decode_batches, tokens = ((2,), 6) if smoke else (((1,) if mode == "quick" else (1, 8)), 256)

    def add(what: str, fn) -> None:
        row = _guard(skipped, what, fn)
        if row is not None:
            rows.append(row)
        if on_row is not None:
            on_row(rows)

    hf_kinds = ("eager",) if smoke else ("eager", "compile")
    for kind_pass in (("jax", "eager"), ("compile",)):
        for model in models:
            variants = [(b, q) for q in (None, *quantize) for b in ("xla", "pallas")] if "jax" in kind_pass else []
            for batch, seq in prefill_shapes:
                for backend, q in variants:
                    add(f"prefill {model} {_impl(backend, q)} B{batch} T{seq}", lambda: {
                        "case": "prefill", "impl": _impl(backend, q), **_prefill_row(
                            prefill_case(model, backend, dtype, batch, seq, iterations=3 if smoke else 20,
                                         quantize=q))})
                for kind in (k for k in hf_kinds if k in kind_pass):
                    add(f"prefill {model} hf-{kind} B{batch} T{seq}",
                        lambda: hf_prefill(model, dtype, batch, seq, compiled=kind == "compile"))
            for batch in decode_batches:
                for backend, q in variants:
                    add(f"decode {model} {_impl(backend, q)} B{batch}", lambda: {
                        "case": "decode", **_decode_row(jax_case(model, backend, dtype, batch, tokens,
                                                                 1 if smoke else 3, 0, q))})
                for kind in (k for k in hf_kinds if k in kind_pass and not smoke):
                    add(f"decode {model} hf-{kind} B{batch}", lambda: {
                        "case": "decode", **_decode_row(hf_case(model, dtype, batch, 64, 3, kind == "compile"))})
    return rows


def _impl(backend: str, quantize: str | None) -> str:
    return f"jaxgpt-{backend}" + (f"-{quantize}" if quantize else "")


def _guard(skipped: list[str], what: str, fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 — a peer that does not run is reported, not fatal
        skipped.append(f"{what}: n/a ({type(e).__name__}: {str(e)[:200]})")
        return None


def _prefill_row(r: dict) -> dict:
    return {"model": r["model"], "batch": r["batch"], "seq": r["seq"], "median_ms": r["median_ms"],
            "min_ms": r["min_ms"], "max_ms": r["max_ms"], "rate": r["tflops"], "unit": "TFLOP/s",
            "compile_s": r["compile_s"], "finite": r["finite"], "method": r["method"]}


def _decode_row(r: dict) -> dict:
    row = {"model": r["model"], "batch": r["batch"], "impl": r["impl"], "median_ms": r["ms_per_token"],
           "min_ms": r.get("ms_per_token_min", r["ms_per_token"]), "max_ms": None, "rate": r["tokens_per_s"],
           "unit": "tokens/s", "compile_s": r["compile_s"], "bytes_per_step": r["bytes_per_step"],
           "method": "wall clock of the compiled decode loop / steps, median of repeats"
                     if r["impl"].startswith("jaxgpt") else "torch: wall clock with cuda synchronize, "
                     "(generate(N) - generate(1)) / (N - 1)"}
    if "step_kernel_ms" in r:
        row["step_kernel_ms"] = r["step_kernel_ms"]
    return row


def hf_prefill(model: str, dtype: str, batch: int, seq: int, *, compiled: bool) -> dict:
    """HF transformers GPT2LMHeadModel forward, random weights, eager or torch.compile'd."""
    import statistics

    import torch
    import transformers

    from jaxgpt import GPTConfig
    cfg = GPTConfig.from_name(model)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg.to_hf_dict())).to(dev, tdtype).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=dev)
    fwd = torch.compile(m) if compiled else m
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            fwd(ids)
        if dev == "cuda":
            torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        times = []
        for _ in range(10):
            if dev == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fwd(ids)
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            else:
                s = time.perf_counter()
                fwd(ids)
                times.append((time.perf_counter() - s) * 1e3)
    med = statistics.median(times)
    flops = 2 * batch * seq * (cfg.num_params - cfg.vocab_size * cfg.n_embd - cfg.n_ctx * cfg.n_embd) \
        + 2 * cfg.n_layer * batch * cfg.n_head * seq * seq * cfg.head_dim
    return {"case": "prefill", "impl": "hf-torch.compile" if compiled else "hf-eager", "model": model, "batch": batch,
            "seq": seq, "median_ms": med, "min_ms": min(times), "max_ms": max(times),
            "rate": flops / (med * 1e-3) / 1e12, "unit": "TFLOP/s", "compile_s": warm, "finite": True,
            "method": f"torch {'CUDA events' if dev == 'cuda' else 'wall clock'}, median of 10 after 3 warm-up "
                      "(full logits for every position, as HF computes them)"}


# ------------------------------------------------------------------------------------------------------ output

def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# jaxgpt bench — {env['device']} ({env['backend']}), {env['dtype']}, {env['date']}", ""]
    if env["mode"] == "smoke":
        lines += [f"**{SMOKE_NOTE}.**", ""]
    lines += ["versions: " + ", ".join(f"{k} {env[k]}" for k in ("jax", "jaxlib", "flax", "torch", "transformers",
                                                                  "tokamax", "driver") if env.get(k)), ""]
    if result.get("kernels"):
        lines += ["## Kernels", "", "| kernel | case | impl | median µs | min | max | rate | % ceiling | max err |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in result["kernels"]:
            pct = "" if r.get("pct_ceiling") is None else f"{r['pct_ceiling']:.0f}%"
            err = "" if r.get("max_err") is None else f"{r['max_err']:.1e}"
            lines.append(f"| {r['kernel']} | {r['case']} | {r['impl']} | {r['median_ms'] * 1e3:.1f} | "
                         f"{r['min_ms'] * 1e3:.1f} | {r['max_ms'] * 1e3:.1f} | {r['rate']:.1f} {r['unit']} | {pct} | "
                         f"{err} |")
        lines += ["", f"Method: {result['kernels'][0]['method']}. GB/s = bytes read + written once; attention "
                  "FLOPs = 2·B·H·T²·D (the causal half); % of the copy / bf16-matmul ceiling measured in the same "
                  "process. Torch rows: CUDA events.", ""]
    if result.get("model"):
        lines += ["## Whole model", "", "| case | model | batch | seq | impl | median ms | rate | compile s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in result["model"]:
            lines.append(f"| {r['case']} | {r['model']} | {r['batch']} | {r.get('seq', '')} | {r['impl']} | "
                         f"{r['median_ms']:.3f} | {r['rate']:.1f} {r['unit']} | {r['compile_s']:.1f} |")
        lines += ["", "Prefill: CUPTI device time of one forward (jaxgpt) / CUDA events (torch). Decode: ms per token, "
                  "wall clock of the compiled loop (jaxgpt) / of `generate` (torch).", ""]
    if result.get("skipped"):
        lines += ["## Not run", ""] + [f"- {s}" for s in result["skipped"]] + [""]
    return "\n".join(lines)


def plots(result: dict, out: Path) -> list[str]:
    """Bar charts of each case's rate per implementation; returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for key, fname, label in (("kernels", "kernels.png", "rate"), ("model", "model.png", "ms")):
        rows = [r for r in result.get(key, []) if r.get("kernel") != "ceiling"]
        if not rows:
            continue
        cases = list(dict.fromkeys(_case_name(r) for r in rows))
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases)), 4.5))
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            vals = []
            for c in cases:
                match = [r for r in rows if _case_name(r) == c and r["impl"] == impl]
                vals.append((match[0]["rate"] if key == "kernels" else match[0]["median_ms"]) if match else 0.0)
            ax.bar([i + j * width for i in range(len(cases))], vals, width, label=impl)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("rate (GB/s or TFLOP/s)" if key == "kernels" else "ms (prefill: per call, decode: per token)")
        title = f"{key}: {result['environment']['device']} {result['environment']['dtype']}"
        if result["environment"]["mode"] == "smoke":
            title += " (CPU smoke: not performance)"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        written.append(fname)
    return written


def _case_name(r: dict) -> str:
    if "kernel" in r:
        return f"{r['kernel']} {r['case']}"
    return f"{r['case']} {r['model']} B{r['batch']}" + (f" T{r['seq']}" if r.get("seq") else "")


# -------------------------------------------------------------------------------------------------------- main

def run(what: str = "all", models: list[str] | None = None, dtype: str = "bfloat16", quick: bool = False,
        out: str | Path | None = None, quantize: tuple[str, ...] = ()) -> dict:
    """Run the bench and write its files; returns the result dict (the content of ``results.json``)."""
    from bench import kernels
    on_gpu = jax.default_backend() == "gpu"
    mode = "smoke" if not on_gpu else ("quick" if quick else "full")
    models = models or ["gpt2", "gpt2-xl"]
    if mode == "smoke":
        models = [smoke_model()]
    result = {"environment": environment(dtype, mode), "kernels": [], "model": [], "skipped": []}
    if mode == "smoke":
        result["note"] = SMOKE_NOTE
        print(f"[bench] {SMOKE_NOTE}", file=sys.stderr)
    if what in ("kernels", "all"):
        kernels.SKIPPED.clear()
        result["kernels"] = kernels.run(mode=mode)
        result["skipped"] += kernels.SKIPPED
        kernels.print_table(result["kernels"])
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _save(result, out)
    if what in ("model", "all"):
        def partial(rows: list[dict]) -> None:
            if out is not None:
                _save({**result, "model": rows}, out)
        result["model"] = model_rows(models, dtype, mode, result["skipped"], on_row=partial, quantize=quantize)
        _print_model(result["model"])
    for s in result["skipped"]:
        print(f"  not run: {s}")
    if out is not None:
        _save(result, out)
        result["files"] = ["results.json", "results.md"] + plots(result, out)
        print(f"[bench] wrote {', '.join(result['files'])} to {out}", file=sys.stderr)
    return result


def _save(result: dict, out: Path) -> None:
    """results.json and results.md as they stand (written again after every case)."""
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(markdown(result))


def smoke_model() -> str:
    """The smoke runs' model (this bench and ``bench.scaling``): a tiny config registered as a preset name, so the
    cases that take a model name run it. Four heads, so tensor parallelism can split them 1, 2 or 4 ways."""
    from jaxgpt.config import PRESETS, GPTConfig
    PRESETS.setdefault("tiny-smoke", GPTConfig(n_layer=2, n_head=4, n_embd=64, n_ctx=128, vocab_size=50257))
    return "tiny-smoke"


def _print_model(rows: list[dict]) -> None:
    if not rows:
        return
    print(f"\n{'case':<8} {'model':<10} {'B':>2} {'T':>5} {'impl':<18} {'median ms':>10} {'rate':>10} {'unit':<9}")
    for r in rows:
        print(f"{r['case']:<8} {r['model']:<10} {r['batch']:>2} {r.get('seq', ''):>5} {r['impl']:<18} "
              f"{r['median_ms']:10.3f} {r['rate']:10.1f} {r['unit']:<9}")


def quantize_list(spec: str) -> tuple[str, ...]:
    """``--quantize int8,int4`` -> the weight formats to add (each checked, so a typo fails before any timing)."""
    from jaxgpt.checkpoint import Scheme
    out = tuple(q for q in spec.split(",") if q and q != "none")
    for q in out:
        Scheme.parse(q)
    return out
