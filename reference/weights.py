"""The oracle's weights without torch: the released sizes, every tensor's name and shape, where the weights come
from when no checkpoint is given (the HF cache or hub, else random weights), and the error for a checkpoint it
cannot use.

The random weights follow the recipe documented in ``docs/architecture.md`` ("Random weights"), written here from
that description (numpy only, nothing from jaxgpt), so that ``python -m reference predict`` and
``python -m jaxgpt predict`` start from the same weights and print the same table.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
         "gpt2-xl": (48, 25, 1600)}  # (n_layer, n_head, n_embd) of the released models

# HF GPT-2 names within a block, in the order the recipe draws them.
BLOCK_TENSORS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")


class CheckpointError(ValueError):
    """A checkpoint the oracle cannot use; the message names the file and the first problem."""


def tensor_shapes(n_layer: int, n_embd: int, n_ctx: int, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's HF name and shape (Conv1D weights stored (in, out)), in the recipe's order."""
    c = n_embd
    block = {"ln_1.weight": (c,), "ln_1.bias": (c,), "attn.c_attn.weight": (c, 3 * c), "attn.c_attn.bias": (3 * c,),
             "attn.c_proj.weight": (c, c), "attn.c_proj.bias": (c,), "ln_2.weight": (c,), "ln_2.bias": (c,),
             "mlp.c_fc.weight": (c, 4 * c), "mlp.c_fc.bias": (4 * c,), "mlp.c_proj.weight": (4 * c, c),
             "mlp.c_proj.bias": (c,)}
    shapes = {"wte.weight": (vocab_size, c), "wpe.weight": (n_ctx, c)}
    for i in range(n_layer):
        shapes |= {f"h.{i}.{name}": block[name] for name in BLOCK_TENSORS}
    return shapes | {"ln_f.weight": (c,), "ln_f.bias": (c,)}


def random_state_dict(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """The documented random weights for ``cfg`` (a ``GPT2Config``): float32 numpy arrays under HF names.

    One ``numpy.random.default_rng(seed)`` draws ``standard_normal(shape, dtype=float32)`` for every tensor in
    ``tensor_shapes`` order and scales it: LayerNorm gains ``1 + 0.1·z``, the two ``c_proj`` weights
    ``(0.02 / (2·n_layer) ** 0.5)·z``, everything else (embeddings, other weights, every bias) ``0.02·z``.
    """
    rng = np.random.default_rng(seed)
    residual = 0.02 / (2 * cfg.n_layer) ** 0.5
    out = {}
    for name, shape in tensor_shapes(cfg.n_layer, cfg.n_embd, cfg.n_ctx, cfg.vocab_size).items():
        z = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
            out[name] = (1.0 + 0.1 * z).astype(np.float32)
        elif name.endswith("c_proj.weight"):
            out[name] = (residual * z).astype(np.float32)
        else:
            out[name] = (0.02 * z).astype(np.float32)
    return out


def find_pretrained(name: str) -> Path | None:
    """A released model's directory in the HF cache, or fetched from the hub unless ``HF_HUB_OFFLINE`` is set."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    online = os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False")
    patterns = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
    for local_only in (True, False) if online else (True,):
        for repo in (f"openai-community/{name}", name):
            try:
                d = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only))
            except Exception:  # not cached, offline, no such repo: try the next place
                continue
            if (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file():
                return d
    return None
