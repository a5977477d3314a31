"""The Pallas backend: every op of a block on our own kernels (``pallas_kernels``).

Per block: ``c_attn`` on the tiled matmul (its output reshaped for free to the packed (B, T, 3, H, D) layout the
flash-attention kernel reads), flash attention (a decode step: the flash-decoding kernel over the KV cache), ``c_proj`` on the matmul, the fused residual+LayerNorm kernel for
``ln_2`` and the next block's ``ln_1`` (and ``ln_f``), and the MLP kernel (variant chosen per shape). Off a GPU the
kernels run in Pallas' interpreter, so this backend works (slowly) everywhere. The LM head at the last position
stays on XLA: it is one (B, C) x (C, V) product with float32 output.
"""

from __future__ import annotations

import jax

from jaxgpt.ops import BACKENDS, XlaOps
from pallas_kernels.decode_attention import decode_attention
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.layer_norm import add_layer_norm
from pallas_kernels.matmul import matmul
from pallas_kernels.mlp import mlp


class PallasOps(XlaOps):
    name = "pallas"

    @staticmethod
    def layer_norm(x, w, b, *, eps: float):
        return add_layer_norm(x, None, w, b, eps=eps)[1]

    @staticmethod
    def add_layer_norm(x, residual, w, b, *, eps: float):
        return add_layer_norm(x, residual, w, b, eps=eps)

    @staticmethod
    def linear(x, w, b):
        return matmul(x, w, b)

    @staticmethod
    def attention(qkv: jax.Array) -> jax.Array:
        return flash_attention(qkv)

    @staticmethod
    def decode_attention(q, k, v, lengths):
        return decode_attention(q, k, v, lengths)

    @staticmethod
    def mlp(x, w_fc, b_fc, w_proj, b_proj):
        return mlp(x, w_fc, b_fc, w_proj, b_proj)


BACKENDS["pallas"] = PallasOps
