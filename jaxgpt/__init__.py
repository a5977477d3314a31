"""jaxgpt: GPT-2 inference in JAX (Flax NNX) with Pallas GPU kernels, checked against a PyTorch oracle.

>>> import jaxgpt
>>> engine = jaxgpt.load_model("gpt2")           # HF cache / hub, else random weights with a warning
>>> p = jaxgpt.predict(engine, "Dobby is")
>>> p.top_k[0].id, p.next_token.text
>>> jaxgpt.generate(engine, ["Dobby is"], max_new_tokens=20)[0].text
>>> fast = jaxgpt.load_model("gpt2-xl", dtype="bfloat16", backend="pallas", kernels="decode=block")
>>> small = jaxgpt.load_model("gpt2-xl", dtype="bfloat16", backend="pallas", quantize="int8")  # weight-only int8

The names below load on first use, so ``import jaxgpt`` (and ``jaxgpt --help``) starts no jax backend.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "jaxgpt.config": ["GPTConfig", "PRESETS"],
    "jaxgpt.engine": ["Engine", "load_model", "load_weights"],
    "jaxgpt.errors": ["JaxGPTError", "UsageError"],
    "jaxgpt.generate": ["GenerateResult", "Generation", "GenerationInterrupted", "generate"],
    "jaxgpt.kernels": ["Kernels"],
    "jaxgpt.model": ["GPT"],
    "jaxgpt.predict": ["Candidate", "Prediction", "predict"],
    "jaxgpt.checkpoint": ["Scheme", "WeightsError", "load_checkpoint", "save_quantized", "save_safetensors"],
    "jaxgpt.quantize": ["quantize_state_dict"],
    "jaxgpt.parity": ["agreement"],
    "jaxgpt.sharding": ["initialize_distributed", "make_mesh", "pmap_last_logits", "shard"],
    "jaxgpt.tokenizer": ["decode", "encode"],
    "jaxgpt.weights": ["build_model", "random_state_dict"],
    "jaxgpt.xla_flags": ["use_command_buffers"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxgpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
