"""GPT-2 weights: where they come from and the model built from them.

Sources, in the order ``jaxgpt.engine.load_weights`` tries them: a local checkpoint (read by ``jaxgpt.checkpoint``),
the local HF cache, the hub when online, and last random weights (host numpy RNG, so the same seed gives the same
weights on any device). ``build_model`` turns a state dict (HF names, Conv1D layout; float, or quantized by
``jaxgpt.quantize``) into an NNX ``GPT`` in the compute dtype.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgpt.checkpoint import LINEARS, expected_shapes, scheme_of
from jaxgpt.config import PRESETS, GPTConfig
from jaxgpt.model import GPT

HF_REPOS = {name: [f"openai-community/{name}", name] for name in PRESETS}


def find_pretrained(name: str, *, allow_download: bool | None = None) -> Path | None:
    """Directory of a released model's weights in the HF cache (or fetched from the hub when online)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    if allow_download is None:
        allow_download = os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False")
    patterns = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
    for local_only in (True, False) if allow_download else (True,):
        for repo in HF_REPOS.get(name, [name]):
            try:
                d = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only))
            except Exception:  # not cached / offline / no such repo: try the next source
                continue
            if (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file():
                return d
    return None


def random_state_dict(cfg: GPTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights from a host RNG (same seed -> same weights on any device).

    The documented recipe (``docs/architecture.md``, "Random weights"), which the oracle implements on its own
    (``reference.weights``): GPT-2's init for matrices (normal 0.02; residual projections 0.02/sqrt(2·n_layer)),
    and, unlike GPT-2's zeros and ones, random biases and LayerNorm gains so that a dropped bias or gain shows in
    parity checks. Changing it changes both tables: keep the two in step.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            value = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith("c_proj.weight"):
            value = (0.02 / (2 * cfg.n_layer) ** 0.5) * rng.standard_normal(shape, dtype=np.float32)
        else:
            value = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        out[name] = value.astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------- model <-> dict

def build_model(cfg: GPTConfig, state_dict: dict[str, np.ndarray], dtype=jnp.float32) -> GPT:
    """An NNX ``GPT`` holding ``state_dict`` (HF names, Conv1D layout) cast to ``dtype``.

    A quantized state dict (``jaxgpt.quantize``) gets ``QLinear`` projections holding its int8/int4 tensors as
    stored; everything else is cast to ``dtype``."""
    model = nnx.eval_shape(lambda: GPT(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    scheme = scheme_of(state_dict, cfg)
    if scheme is not None:
        from jaxgpt.quantize import install  # (loads the quantized formats only for quantized weights)
        install(model, state_dict, scheme, dtype)
    for name, value in state_dict.items():
        if scheme is not None and name.endswith((".weight", ".scale", ".bias")) and \
                name.rsplit(".", 1)[0].endswith((*LINEARS, "lm_head")):
            continue  # installed above
        _param(model, name).set_value(jnp.asarray(value, dtype=dtype))
    return model


def export_state_dict(model: GPT) -> dict[str, np.ndarray]:
    """The model's weights as float32 numpy arrays under HF names (Conv1D layout)."""
    return {name: np.asarray(_param(model, name).get_value(), dtype=np.float32)
            for name in expected_shapes(model.config)}


def _param(model: GPT, name: str) -> nnx.Param:
    obj = model
    for part in name.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
