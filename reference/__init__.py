"""An independent PyTorch GPT-2: the oracle jaxgpt is checked against. Imports nothing from jaxgpt.

The names below load on first use, so ``python -m reference --help`` and its argument errors need no torch.
"""

import importlib

_WHERE = {"GPT2": "reference.model", "GPT2Config": "reference.model", "CheckpointError": "reference.model",
          "load_gpt2": "reference.model", "random_state_dict": "reference.weights"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'reference' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
