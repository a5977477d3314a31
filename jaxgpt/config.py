"""GPT-2 model configuration: a frozen dataclass with HF/nanoGPT field names and the four released presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class GPTConfig:
    """Shape of a GPT-2 model. Field names follow HF ``GPT2Config`` / nanoGPT.

    GPT-2 fixes the rest: learned absolute positions, pre-LN blocks, GELU (tanh form), LayerNorm eps 1e-5, biases
    everywhere, LM head tied to ``wte``.
    """

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_ctx: int = 1024
    vocab_size: int = 50257
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def num_params(self) -> int:
        """Parameter count with the LM head tied to ``wte`` (counted once)."""
        c = self.n_embd
        per_block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c)
        return self.vocab_size * c + self.n_ctx * c + self.n_layer * per_block + 2 * c

    def describe(self) -> str:
        return (f"{self.num_params / 1e6:.0f}M params: n_layer={self.n_layer} n_head={self.n_head} "
                f"n_embd={self.n_embd} n_ctx={self.n_ctx} vocab_size={self.vocab_size}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A released preset (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``), optionally overridden."""
        key = name.removeprefix("openai-community/")
        if key not in PRESETS:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPTConfig":
        """From an HF ``config.json`` dict (``n_positions`` is HF's newer name for ``n_ctx``)."""
        try:
            return cls(n_layer=int(d["n_layer"]), n_head=int(d["n_head"]), n_embd=int(d["n_embd"]),
                       n_ctx=int(d.get("n_positions", d.get("n_ctx", 1024))),
                       vocab_size=int(d.get("vocab_size", 50257)),
                       layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)))
        except KeyError as e:
            raise ValueError(f"config has no {e.args[0]!r} field") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "GPTConfig":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"config {path} is not a JSON object")
        return cls.from_hf_dict(d)

    def to_hf_dict(self) -> dict:
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": self.n_layer,
                "n_head": self.n_head, "n_embd": self.n_embd, "n_positions": self.n_ctx, "n_ctx": self.n_ctx,
                "vocab_size": self.vocab_size, "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation_function": "gelu_new"}


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
