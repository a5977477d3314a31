"""jaxgpt against the PyTorch oracle in ``reference/``: same weights, same prompts, logits and greedy tokens; and a
quantized model against the float one on the same weights (``agreement``: the quantization quality report).

The oracle runs in float32 (the truth) and, for a low-precision run, also in that dtype: the tolerance for a
bfloat16/float16 jaxgpt run is 3× the oracle's own low-precision error plus a small floor (flash-attention's
``test_gpt.py`` rule), and 1e-4 relative to the logit scale in float32. Near-ties within the tolerance may swap
order in the top-k or the greedy path; anything else is a disagreement.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from jaxgpt import tokenizer
from jaxgpt.engine import Engine
from jaxgpt.errors import UsageError
from jaxgpt.generate import generate

FLOOR = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 4e-3}  # × max(1, max|logit|)


@dataclasses.dataclass
class PromptParity:
    prompt: str
    max_abs_diff: float
    tolerance: float
    ref_lowp_diff: float | None
    topk_jax: list[int]
    topk_ref: list[int]
    topk_ok: bool
    greedy_jax: list[int]
    greedy_ref: list[int]
    first_divergence: int | None  # step index, or None
    divergence_is_tie: bool

    @property
    def ok(self) -> bool:
        return (self.max_abs_diff <= self.tolerance and self.topk_ok
                and (self.first_divergence is None or self.divergence_is_tie))


def _torch_dtype(name: str):
    import torch
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _swaps_are_ties(ref_row: np.ndarray, got: list[int], want: list[int], tol: float) -> bool:
    """Where the orders differ, the reference must score the two ids within ``tol`` of each other."""
    return all(a == b or abs(float(ref_row[a]) - float(ref_row[b])) <= tol for a, b in zip(got, want))


def compare(engine: Engine, ref_model, prompts: list[str], *, steps: int = 8, top_k: int = 10,
            ref_lowp=None) -> list[PromptParity]:
    """Run both models on ``prompts``; ``ref_model`` is a float32 ``reference.GPT2`` holding the same weights."""
    import torch
    dev = next(ref_model.parameters()).device
    rows = [tokenizer.encode(p) for p in prompts]
    got = engine.last_logits(rows)  # (B, V) float32
    greedy = [[] for _ in prompts]
    if steps:
        n = min(steps, engine.config.n_ctx - max(map(len, rows)))
        if n > 0:
            gen = generate(engine, rows, max_new_tokens=n, stop_at_eos=False)
            greedy = [g.ids for g in gen]
    out = []
    for prompt, ids, row, g_jax in zip(prompts, rows, got, greedy):
        with torch.no_grad():
            ref = ref_model(torch.tensor([ids], device=dev))[0, -1].float().cpu().numpy()
            lowp_diff = None
            if ref_lowp is not None:
                lowp = ref_lowp(torch.tensor([ids], device=dev))[0, -1].float().cpu().numpy()
                lowp_diff = float(np.max(np.abs(lowp - ref)))
        scale = max(1.0, float(np.max(np.abs(ref))))
        tol = FLOOR[engine.dtype_name] * scale + (3 * lowp_diff if lowp_diff is not None else 0.0)
        diff = float(np.max(np.abs(row - ref))) if np.all(np.isfinite(row)) else float("inf")
        tk_jax = [int(i) for i in np.argsort(-row, kind="stable")[:top_k]]
        tk_ref = [int(i) for i in np.argsort(-ref, kind="stable")[:top_k]]
        topk_ok = tk_jax == tk_ref or _swaps_are_ties(ref, tk_jax, tk_ref, 2 * tol)
        # Greedy paths: jaxgpt through the KV-cache generation loop (``greedy``), the oracle recomputing the
        # full sequence each step.
        g_ref = ref_model.greedy(ids, len(g_jax))
        div = next((i for i, (a, b) in enumerate(zip(g_jax, g_ref)) if a != b), None)
        tie = False
        if div is not None:
            with torch.no_grad():
                r = ref_model(torch.tensor([ids + g_ref[:div]], device=dev))[0, -1].float().cpu().numpy()
            tie = abs(float(r[g_jax[div]]) - float(r[g_ref[div]])) <= 2 * tol
        out.append(PromptParity(prompt, diff, tol, lowp_diff, tk_jax, tk_ref, topk_ok, g_jax, g_ref, div, tie))
    return out


def reference_model(cfg, state_dict: dict[str, np.ndarray], dtype: str = "float32", device: str = "cpu"):
    """A ``reference.GPT2`` holding ``state_dict`` (float32 numpy, HF names). The oracle ships with the source tree
    (``reference/``), not with an installed package."""
    try:
        from reference import GPT2, GPT2Config
    except ImportError:
        raise UsageError("parity needs the PyTorch oracle in reference/, which ships with the source tree, not the "
                         "installed package: run it from a clone of the repository (pip install -e .)") from None
    rcfg = GPT2Config(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_ctx, cfg.vocab_size, cfg.layer_norm_epsilon)
    return GPT2.from_state_dict(rcfg, state_dict, _torch_dtype(dtype)).to(device)


def _topk_words(r: PromptParity, dtype: str) -> str:
    """How the two top-k lists compare, in words that agree with the verdict: equal, equal up to near-ties (which the
    tolerance allows and ``dtype`` rounding may reorder), or different beyond them."""
    k = len(r.topk_ref)
    if r.topk_jax == r.topk_ref:
        return f"top-{k} ids equal"
    n = sum(a != b for a, b in zip(r.topk_jax, r.topk_ref))
    if r.topk_ok:
        return (f"top-{k} ids equal up to near-ties ({n} position{'s' if n > 1 else ''} swapped between ids whose "
                f"reference logits are within the tolerance; {dtype} rounding may reorder them)")
    return f"top-{k} ids differ beyond near-ties ({n} position{'s' if n > 1 else ''})"


def format_report(results: list[PromptParity], engine: Engine) -> str:
    """One verdict line per prompt (``OK``: logits within the tolerance and any reordering only among near-ties),
    then the greedy steps side by side up to the first divergence."""
    lines = []
    for r in results:
        verdict = "OK" if r.ok else "MISMATCH"
        lowp = f", oracle {engine.dtype_name} vs float32 {r.ref_lowp_diff:.2e}" if r.ref_lowp_diff is not None else ""
        lines.append(f"[{verdict}] {r.prompt!r}: max |Δlogit| {r.max_abs_diff:.3e} (tolerance {r.tolerance:.1e}"
                     f"{lowp}); {_topk_words(r, engine.dtype_name)}")
        if r.greedy_jax:
            lines.append(f"  {'step':>4}  {'jaxgpt':>22}  {'reference':>22}")
            for i, (a, b) in enumerate(zip(r.greedy_jax, r.greedy_ref)):
                mark = "" if a == b else ("  <- diverges (tie within tolerance)" if r.divergence_is_tie
                                          else "  <- diverges")
                lines.append(f"  {i:>4}  {a:>6} {tokenizer.decode_token(a)!r:>15}  "
                             f"{b:>6} {tokenizer.decode_token(b)!r:>15}{mark}")
                if a != b:
                    break
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- quantized vs float

def _all_logits(engine, ids: list[int]) -> np.ndarray:
    """Float32 logits at every position of one prompt: (T, V)."""
    ops = engine.ops

    def f(state, x):
        m = nnx.merge(engine.graphdef, state)
        h = m.hidden_states(x, ops)  # (1, T, C)
        return ops.lm_head(h[0], m.head())  # (T, V) float32

    return np.asarray(jax.jit(f)(engine.state, engine.put(np.asarray([ids], np.int32))))


def agreement(reference, quantized, prompts: list[list[int]], *, steps: int = 64, top_k: int = 10) -> dict:
    """How closely ``quantized`` (an Engine) follows ``reference`` (the float Engine on the same weights).

    Over every position of every prompt: mean and max |Δlogit|, top-1 agreement and the mean overlap of the top-k
    sets; then ``steps`` greedy tokens per prompt from each model: the fraction equal and the first divergence.
    """
    diffs, top1, overlap, maxd, finite = [], [], [], 0.0, True
    for ids in prompts:
        a, b = _all_logits(reference, ids), _all_logits(quantized, ids)  # (T, V)
        finite &= bool(np.isfinite(b).all())
        d = np.abs(a - b)
        diffs.append(d.mean(-1))
        maxd = max(maxd, float(d.max()))
        top1.append(a.argmax(-1) == b.argmax(-1))
        ta, tb = np.argsort(-a, -1)[:, :top_k], np.argsort(-b, -1)[:, :top_k]
        overlap += [len(set(x) & set(y)) / top_k for x, y in zip(ta, tb)]
    report = {"positions": int(sum(len(p) for p in prompts)), "mean_abs_dlogit": float(np.concatenate(diffs).mean()),
              "max_abs_dlogit": maxd, "top1_agreement": float(np.concatenate(top1).mean()),
              f"top{top_k}_overlap": float(np.mean(overlap)), "top_k": top_k, "finite": finite, "steps": steps}
    if steps > 0:
        kw = dict(max_new_tokens=steps, stop_at_eos=False)
        ga, gb = generate(reference, prompts, **kw), generate(quantized, prompts, **kw)
        same, first = [], []
        for x, y in zip(ga, gb):
            eq = [i == j for i, j in zip(x.ids, y.ids)]
            same += eq
            first.append(eq.index(False) if False in eq else None)
        report |= {"greedy_token_agreement": float(np.mean(same)), "first_divergence": first}
    return report


def format_agreement(r: dict) -> str:
    k = r["top_k"]
    lines = [f"positions {r['positions']}: mean |Δlogit| {r['mean_abs_dlogit']:.4f}, max {r['max_abs_dlogit']:.3f}; "
             f"top-1 agreement {100 * r['top1_agreement']:.1f}%, top-{k} overlap {100 * r['top%d_overlap' % k]:.1f}%"]
    if r.get("steps"):
        div = ", ".join("none" if f is None else f"step {f}" for f in r["first_divergence"])
        lines.append(f"greedy {r['steps']} steps: {100 * r['greedy_token_agreement']:.1f}% of tokens equal; "
                     f"first divergence per prompt: {div}")
    if not r["finite"]:
        lines.append("FAIL: non-finite logits")
    return "\n".join(lines)
