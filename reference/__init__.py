"""An independent PyTorch GPT-2: the oracle jaxgpt is checked against. Imports nothing from jaxgpt."""

from reference.model import GPT2, GPT2Config, load_gpt2

__all__ = ["GPT2", "GPT2Config", "load_gpt2"]
