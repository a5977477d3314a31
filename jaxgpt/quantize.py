"""Weight-only quantization (post-training, no calibration data): int8 per channel and int4 group-wise.

The four projections of every block (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``: 69-95% of
the bytes a decode step reads) are stored quantized; embeddings, LayerNorms and biases stay in the compute dtype.
The LM head is tied to ``wte`` (the other 5-31%: gpt2-xl to gpt2). By default it stays in the compute dtype; with
``head=True`` (``"int8+head"``, ``jaxgpt quantize --lm-head``) the model also holds an int8 per-vocab-entry copy of
wte as ``lm_head`` that the head reads instead (the embedding lookup keeps the float ``wte``): fewer bytes a decode
step, more bytes held, and a quality cost the ``jaxgpt.parity.agreement`` report measures. The checkpoint stores that copy as
``wte.T`` (C, V) in the projections' format; the model holds it (V, C) like wte (``QHead``), whose rows the decode
head kernel reads with aligned loads.

A quantized state dict keeps HF names: ``h.{i}.attn.c_attn.weight`` holds the int8 (or packed int4, uint8) values
and ``h.{i}.attn.c_attn.scale`` the float32 scales, in ``pallas_kernels.quant_format``'s formats; the scheme is
read back from the dtypes and shapes, so a state dict describes itself (``jaxgpt.checkpoint`` reads and writes
quantized checkpoints: ``quantization.json``, the scheme checked against the tensors, and ``config.json``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgpt.checkpoint import LINEARS, Scheme, is_quantized
from jaxgpt.config import GPTConfig
from jaxgpt.errors import UsageError
from pallas_kernels.quant_format import QHead, QWeight, head_from_copy, quantize


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

def run_bytes(state_dict: dict[str, np.ndarray], cfg: GPTConfig, itemsize: int = 2) -> dict[str, int]:
    """Bytes the model holds on the device, float tensors at ``itemsize`` (bf16: 2): the projections (quantized
    or not, with the int8 LM-head copy if any) and the rest (embeddings, LayerNorms, biases)."""
    proj = {f"h.{i}.{n}.{t}" for i in range(cfg.n_layer) for n in LINEARS for t in ("weight", "scale")}
    proj |= {"lm_head.weight", "lm_head.scale"}
    quantized = is_quantized(state_dict)
    p = sum(int(v.nbytes) if quantized else int(v.size) * itemsize for k, v in state_dict.items() if k in proj)
    rest = sum(int(v.size) * itemsize for k, v in state_dict.items() if k not in proj)
    return {"projections": p, "rest": rest, "total": p + rest}
