"""Weight-only quantization (post-training, no calibration data): int8 per channel and int4 group-wise.

The four projections of every block (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``: 69-95% of
the bytes a decode step reads) are stored quantized; embeddings, LayerNorms and biases stay in the compute dtype.
The LM head is tied to ``wte`` (the other 5-31%: gpt2-xl to gpt2). By default it stays in the compute dtype; with
``head=True`` (``"int8+head"``, ``jaxgpt quantize --lm-head``) the model also holds an int8 per-vocab-entry copy of
wte as ``lm_head`` that the head reads instead (the embedding lookup keeps the float ``wte``): fewer bytes a decode
step, more bytes held, and a quality cost the ``agreement`` report measures. The checkpoint stores that copy as
``wte.T`` (C, V) in the projections' format; the model holds it (V, C) like wte (``QHead``), whose rows the decode
head kernel reads with aligned loads.

A quantized state dict keeps HF names: ``h.{i}.attn.c_attn.weight`` holds the int8 (or packed int4, uint8) values
and ``h.{i}.attn.c_attn.scale`` the float32 scales, in ``pallas_kernels.quant_matmul``'s formats; the scheme is
read back from the dtypes and shapes, so a state dict describes itself. A checkpoint directory adds
``quantization.json`` (the scheme, checked against the tensors) and ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgpt.config import GPTConfig
from jaxgpt.errors import UsageError
from pallas_kernels.quant_matmul import (DEFAULT_GROUP, QHead, QWeight, dequantize, head_from_copy,  # noqa: F401
                                         quantize)

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
FORMAT = "jaxgpt-weight-only"


@dataclasses.dataclass(frozen=True)
class Scheme:
    """``bits`` 8 (per output channel) or 4 (group-wise along the input dimension, ``group`` rows a scale)."""

    bits: int
    group: int | None = None
    head: bool = False  # an int8 copy of the tied LM head as well

    @property
    def name(self) -> str:
        return f"int{self.bits}" + ("+head" if self.head else "")

    @classmethod
    def parse(cls, spec: "str | Scheme", group: int | None = None, head: bool = False) -> "Scheme":
        """``"int8"``, ``"int4"`` (group 128, or ``group``), either with ``"+head"`` (or ``head``), or a ``Scheme``."""
        if isinstance(spec, Scheme):
            return spec
        base, plus, rest = str(spec).partition("+")
        if plus and rest != "head":
            raise UsageError(f"unknown quantization {spec!r}: choose int8 or int4, optionally +head")
        head = head or bool(plus)
        if base == "int8":
            if group is not None:
                raise UsageError("int8 scales are per output channel: --group applies to int4 only")
            return cls(8, None, head)
        if base == "int4":
            g = DEFAULT_GROUP if group is None else group
            if g < 32 or g & (g - 1):
                raise UsageError(f"--group {g} must be a power of two >= 32")
            return cls(4, g, head)
        raise UsageError(f"unknown quantization {spec!r}: choose int8 or int4, optionally +head")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "bits": self.bits, "group_size": self.group,
                "scales": "per output channel" if self.bits == 8 else "per group of input rows",
                "symmetric": True, "quantized": [f"h.*.{n}.weight" for n in LINEARS]
                + (["lm_head.weight (int8 per vocab entry, (C, V))"] if self.head else []),
                "lm_head": "int8 copy" if self.head else "float, tied to wte",
                "float": ["wte", "wpe", "ln_*", "ln_f", "biases"]}


class QLinear(nnx.Module):
    """A ``Linear`` whose weight is stored quantized: ``weight`` holds the int8/uint8 values, ``scale`` the scales."""

    def __init__(self, w: QWeight, bias: jax.Array):
        self.weight = nnx.Param(jnp.asarray(w.q))
        self.scale = nnx.Param(jnp.asarray(w.scale, jnp.float32))
        self.bias = nnx.Param(bias)
        self.bits, self.group, self.k = w.bits, w.group, w.k

    def kernel(self) -> QWeight:
        """The weight as the ops see it (``ops.linear`` and friends dispatch on ``QWeight``)."""
        return QWeight(self.weight[...], self.scale[...], self.bits, self.group, self.k)


class QLMHead(nnx.Module):
    """The int8 LM head copy, held (V, C) like wte (``QHead``); the checkpoint stores it (C, V)."""

    def __init__(self, head: QHead):
        self.weight = nnx.Param(jnp.asarray(head.q))  # (V, C) int8
        self.scale = nnx.Param(jnp.asarray(head.scale, jnp.float32))  # (V,)

    def kernel(self) -> QHead:
        """The head as ``ops.lm_head`` and ``decode_logits`` take it."""
        return QHead(self.weight[...], self.scale[...])


# ----------------------------------------------------------------------------------------------- state dicts

def is_quantized(state_dict: dict) -> bool:
    return any(k.endswith(".scale") for k in state_dict)


def scheme_of(state_dict: dict, cfg: GPTConfig) -> Scheme | None:
    """The scheme a quantized state dict's tensors are in (None for a float one); checks every projection."""
    if not is_quantized(state_dict):
        return None
    q = state_dict.get("h.0.attn.c_attn.weight")
    s = state_dict.get("h.0.attn.c_attn.scale")
    if q is None or s is None:
        raise UsageError("quantized state dict without h.0.attn.c_attn.weight / .scale")
    if np.dtype(q.dtype) == np.int8:
        scheme = Scheme(8)
    elif np.dtype(q.dtype) == np.uint8 and s.ndim == 2 and s.shape[0] > 0:
        try:
            scheme = Scheme.parse("int4", 2 * q.shape[0] // s.shape[0])
        except UsageError:
            from jaxgpt.weights import WeightsError
            raise WeightsError(f"h.0.attn.c_attn: packed int4 weight {q.shape} and scales {s.shape} give no valid "
                               "group size") from None
    else:
        raise UsageError(f"h.0.attn.c_attn.weight has dtype {q.dtype}: expected int8 or uint8 (packed int4)")
    if "lm_head.scale" in state_dict:
        scheme = dataclasses.replace(scheme, head=True)
    check_state_dict(state_dict, cfg, scheme)
    return scheme


def quantized_shapes(cfg: GPTConfig, scheme: Scheme) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every projection's ``weight`` and ``scale`` shape and dtype under ``scheme``."""
    c = cfg.n_embd
    dims = {"attn.c_attn": (c, 3 * c), "attn.c_proj": (c, c), "mlp.c_fc": (c, 4 * c), "mlp.c_proj": (4 * c, c)}
    out = {}
    for i in range(cfg.n_layer):
        for name, (k, n) in dims.items():
            p = f"h.{i}.{name}"
            if scheme.bits == 8:
                out[p + ".weight"], out[p + ".scale"] = ((k, n), np.dtype(np.int8)), ((1, n), np.dtype(np.float32))
            else:
                kp = -(-k // scheme.group) * scheme.group
                out[p + ".weight"] = ((kp // 2, n), np.dtype(np.uint8))
                out[p + ".scale"] = ((kp // scheme.group, n), np.dtype(np.float32))
    if scheme.head:
        out["lm_head.weight"] = ((c, cfg.vocab_size), np.dtype(np.int8))
        out["lm_head.scale"] = ((1, cfg.vocab_size), np.dtype(np.float32))
    return out


def check_state_dict(state_dict: dict, cfg: GPTConfig, scheme: Scheme, source: str = "quantized weights") -> None:
    """Every tensor present with its shape and dtype; the first mismatch is named (a ``WeightsError``)."""
    from jaxgpt.weights import WeightsError, expected_shapes
    want = {k: (v, None) for k, v in expected_shapes(cfg).items()} | quantized_shapes(cfg, scheme)
    for name, (shape, dtype) in want.items():
        if name not in state_dict:
            raise WeightsError(f"{source}: missing tensor {name!r} (expected shape {shape})")
        v = state_dict[name]
        if tuple(v.shape) != tuple(shape):
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(v.shape)}, expected {tuple(shape)} "
                               f"for {scheme.name} {cfg.describe()}")
        if dtype is not None and np.dtype(v.dtype) != dtype:
            raise WeightsError(f"{source}: tensor {name!r} has dtype {v.dtype}, expected {dtype}")
        if name.endswith(".scale") and not (np.all(np.isfinite(v)) and np.all(np.asarray(v) > 0)):
            raise WeightsError(f"{source}: tensor {name!r} has scales that are not finite and positive")
    extra = sorted(set(state_dict) - set(want))
    if extra:
        raise WeightsError(f"{source}: unexpected tensor {extra[0]!r} for a {scheme.name} {cfg.n_layer}-layer GPT-2")


def quantize_state_dict(state_dict: dict[str, np.ndarray], cfg: GPTConfig,
                        scheme: "Scheme | str") -> dict[str, np.ndarray]:
    """A float state dict (HF names, Conv1D layout) with its four projections per block quantized."""
    scheme = Scheme.parse(scheme)
    if is_quantized(state_dict):
        raise UsageError("the weights are already quantized")
    out = dict(state_dict)
    for i in range(cfg.n_layer):
        for name in LINEARS:
            key = f"h.{i}.{name}"
            w = quantize(state_dict[key + ".weight"], bits=scheme.bits, group=scheme.group)
            out[key + ".weight"], out[key + ".scale"] = np.asarray(w.q), np.asarray(w.scale)
    if scheme.head:
        w = quantize(np.asarray(state_dict["wte.weight"]).T, bits=8)  # (C, V), a scale per vocab entry
        out["lm_head.weight"], out["lm_head.scale"] = np.asarray(w.q), np.asarray(w.scale)
    return out


def install(model, state_dict: dict[str, np.ndarray], scheme: Scheme, dtype) -> None:
    """Replace the model's projections by ``QLinear``s holding the quantized tensors (biases cast to ``dtype``)."""
    c = model.config.n_embd
    k_of = {"attn.c_attn": c, "attn.c_proj": c, "mlp.c_fc": c, "mlp.c_proj": 4 * c}
    for i, blk in enumerate(model.h):
        for name in LINEARS:
            key = f"h.{i}.{name}"
            w = QWeight(state_dict[key + ".weight"], state_dict[key + ".scale"], scheme.bits, scheme.group, k_of[name])
            parent, attr = name.split(".")
            setattr(getattr(blk, parent), attr, QLinear(w, jnp.asarray(state_dict[key + ".bias"], dtype)))
    if scheme.head:  # the (C, V) copy held (V, C), like wte: read by GPT.head()
        model.lm_head = QLMHead(head_from_copy(state_dict["lm_head.weight"], state_dict["lm_head.scale"]))


# ----------------------------------------------------------------------------------------------- checkpoints

def save_quantized(state_dict: dict[str, np.ndarray], cfg: GPTConfig, directory: str | Path) -> Path:
    """Write ``model.safetensors`` (quantized tensors), ``quantization.json`` and ``config.json``. Every file is
    written aside first and renamed into place whole, so a failure never leaves a half-written file."""
    from safetensors.numpy import save_file
    scheme = scheme_of(state_dict, cfg)
    if scheme is None:
        raise UsageError("the state dict is not quantized")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {"model.safetensors": None, "quantization.json": json.dumps(scheme.to_json(), indent=2) + "\n",
             "config.json": json.dumps(cfg.to_hf_dict(), indent=2) + "\n"}
    tmp = Path(tempfile.mkdtemp(prefix=".quantize-", dir=d))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "np", "quantization": scheme.name})
        for name, text in files.items():
            if text is not None:
                (tmp / name).write_text(text)
        umask = os.umask(0)
        os.umask(umask)
        for name in files:
            os.chmod(tmp / name, 0o666 & ~umask)
            os.replace(tmp / name, d / name)
    finally:
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()
    return d


def read_quantized(directory: str | Path, cfg: GPTConfig | None = None) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """A quantized checkpoint directory -> (config, quantized state dict), every tensor and the scheme checked."""
    from jaxgpt.weights import WeightsError, read_checkpoint
    d = Path(directory)
    try:
        meta = json.loads((d / "quantization.json").read_text())
        bits, group = int(meta["bits"]), meta.get("group_size")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{d / 'quantization.json'}: unreadable ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{d / 'quantization.json'}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if cfg is None:
        if not (d / "config.json").is_file():
            raise WeightsError(f"{d}: a quantized checkpoint needs its config.json")
        cfg = GPTConfig.from_json(d / "config.json")
    try:
        scheme = Scheme.parse(f"int{bits}", group if bits == 4 else None, head=meta.get("lm_head") == "int8 copy")
    except UsageError as e:
        raise WeightsError(f"{d / 'quantization.json'}: {e}") from None
    sd = read_checkpoint(d)
    check_state_dict(sd, cfg, scheme, source=str(d))
    return cfg, sd


def run_bytes(state_dict: dict[str, np.ndarray], cfg: GPTConfig, itemsize: int = 2) -> dict[str, int]:
    """Bytes the model holds on the device, float tensors at ``itemsize`` (bf16: 2): the projections (quantized
    or not, with the int8 LM-head copy if any) and the rest (embeddings, LayerNorms, biases)."""
    proj = {f"h.{i}.{n}.{t}" for i in range(cfg.n_layer) for n in LINEARS for t in ("weight", "scale")}
    proj |= {"lm_head.weight", "lm_head.scale"}
    quantized = is_quantized(state_dict)
    p = sum(int(v.nbytes) if quantized else int(v.size) * itemsize for k, v in state_dict.items() if k in proj)
    rest = sum(int(v.size) * itemsize for k, v in state_dict.items() if k not in proj)
    return {"projections": p, "rest": rest, "total": p + rest}


# ----------------------------------------------------------------------------------------------- quality

def _all_logits(engine, ids: list[int]) -> np.ndarray:
    """Float32 logits at every position of one prompt: (T, V)."""
    from jaxgpt.ops import get_ops

    def f(state, x):
        m = nnx.merge(engine.graphdef, state)
        ops = get_ops(engine.backend)
        h = m.hidden_states(x, ops)  # (1, T, C)
        return ops.lm_head(h[0], m.head())  # (T, V) float32

    return np.asarray(jax.jit(f)(engine.state, engine.put(np.asarray([ids], np.int32))))


def agreement(reference, quantized, prompts: list[list[int]], *, steps: int = 64, top_k: int = 10) -> dict:
    """How closely ``quantized`` (an Engine) follows ``reference`` (the float Engine on the same weights).

    Over every position of every prompt: mean and max |Δlogit|, top-1 agreement and the mean overlap of the top-k
    sets; then ``steps`` greedy tokens per prompt from each model: the fraction equal and the first divergence.
    """
    from jaxgpt.generate import generate
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
