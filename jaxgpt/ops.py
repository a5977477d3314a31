"""The XLA backend's ops, and the contract every backend keeps.

The model calls ``ops.layer_norm``, ``ops.add_layer_norm``, ``ops.qkv``, ``ops.attention``,
``ops.decode_attention``, ``ops.linear``, ``ops.mlp`` and ``ops.lm_head``. ``XlaOps`` writes each in plain jnp (XLA
fuses what it can; attention goes to cuDNN for bf16/f16 on a GPU). Other backends subclass it and override the ops
they have kernels for, so any op without a kernel falls back to the jnp version (``jaxgpt.backends`` is the
registry). A decode step may instead run each block as one op: when ``ops.block_decode`` says so, the model's loop
over blocks calls ``decode_block`` per block and ``decode_head`` for ln_f and the LM head (XLA never does).

A backend may hand a value of its own between two of its ops (the Pallas backend's decode step passes a matmul's
unfinished split-K partials to the next kernel, which finishes them): the model passes op outputs along untouched
and never looks inside them except for the arrays ``qkv`` and ``attention`` document. Projection weights are arrays
or, in a quantized model, ``QWeight``s (int8 / packed int4 values and their scales,
``pallas_kernels.quant_format``, imported only when a quantized weight shows up).

Precision contract: LayerNorm statistics and softmax run in float32; matmuls take the compute dtype and accumulate
in float32 (float32 models use ``Precision.HIGHEST`` so a GPU does not silently drop to TF32); logits are float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxgpt.kernels import Kernels


def matmul_precision(dtype) -> lax.Precision:
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GPT-2's GELU, tanh form (HF ``gelu_new``)."""
    return jax.nn.gelu(x, approximate=True)


class BlockParams(NamedTuple):
    """One block's parameters as arrays (HF names, linear weights (in, out)), for backends that run a whole block's
    decode step at once (``decode_block``)."""

    ln_1_w: jax.Array
    ln_1_b: jax.Array
    c_attn_w: Any  # (C, 3C) array or QWeight
    c_attn_b: jax.Array
    c_proj_w: Any
    c_proj_b: jax.Array
    ln_2_w: jax.Array
    ln_2_b: jax.Array
    c_fc_w: Any
    c_fc_b: jax.Array
    mlp_proj_w: Any
    mlp_proj_b: jax.Array


def quantized(w) -> bool:
    """Whether a projection or head weight is held quantized (a ``QWeight``/``QHead`` rather than an array)."""
    return not isinstance(w, jax.Array)


def _dequantize(w, dtype):
    from pallas_kernels.quant_format import dequantize
    return dequantize(w, dtype)


@dataclasses.dataclass(frozen=True)
class XlaOps:
    """Reference backend: jnp everywhere, XLA/cuDNN decide the kernels. ``kernels`` is the Pallas backend's kernel
    choice (``jaxgpt.kernels``); XLA has none to make."""

    kernels: Kernels = Kernels()
    name = "xla"
    interpreted = False  # whether the kernels run in an interpreter (the Pallas backend off a GPU)

    def block_decode(self, x, blocks: list[BlockParams], *, n_head: int) -> bool:
        """Whether this decode step (x (B, 1, C)) runs each block as one op (``decode_block``) and ln_f with the LM
        head as one more (``decode_head``), rather than the model's per-op path. XLA: never."""
        return False

    def decode_start(self, x, n_layer: int, *, n_head: int):
        """The carry the first ``decode_block`` takes (backends with ``block_decode``)."""
        raise NotImplementedError

    def decode_block(self, carry, p: BlockParams, k_cache, v_cache, pos, *, layer: int, n_head: int, eps: float):
        """One block's decode step as one op: ``(carry, k_cache, v_cache)`` (backends with ``block_decode``)."""
        raise NotImplementedError

    def decode_head(self, carry, ln_w, ln_b, head, *, eps: float):
        """ln_f and the LM head after the last ``decode_block``: float32 logits (B, V)."""
        raise NotImplementedError

    @staticmethod
    def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, *, eps: float) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * lax.rsqrt(var + eps) * w.astype(jnp.float32) + b.astype(jnp.float32)
        return y.astype(x.dtype)

    def add_layer_norm(self, x, residual, w, b, *, eps: float):
        """``h = residual + x; return h, LN(h)``."""
        h = residual + x
        return h, self.layer_norm(h, w, b, eps=eps)

    @staticmethod
    def linear(x: jax.Array, w, b: jax.Array) -> jax.Array:
        """x (..., K) @ w (K, N) + b; a quantized ``w`` is dequantized in the compute dtype (XLA fuses it)."""
        if quantized(w):
            w = _dequantize(w, x.dtype)
        return (jnp.dot(x, w, precision=matmul_precision(x.dtype)) + b).astype(x.dtype)

    def qkv(self, x: jax.Array, w, b: jax.Array, *, n_head: int) -> jax.Array:
        """x (B, T, C) @ w (C, 3C) + b -> packed qkv (B, T, 3, H, D) (a free reshape of the matmul output)."""
        B, T, C = x.shape
        return self.linear(x, w, b).reshape(B, T, 3, n_head, C // n_head)  # (B, T, 3, H, D)

    @staticmethod
    def attention(qkv: jax.Array) -> jax.Array:
        """Causal self-attention of packed qkv (B, T, 3, H, D) -> (B, T, H, D)."""
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, D) each
        if q.dtype in (jnp.bfloat16, jnp.float16) and jax.default_backend() == "gpu":
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
        return attention_reference(q, k, v)

    @staticmethod
    def decode_attention(qkv: jax.Array, k_cache: jax.Array, v_cache: jax.Array, pos: jax.Array):
        """A decode step's attention: qkv (B, 1, 3, H, D) of the new tokens, caches (B, S, H, D), pos (B,).

        Writes row b's key/value to slot ``pos[b]`` and attends over slots ``0..pos[b]``: returns
        ``(out (B, H, D), k_cache, v_cache)``.
        """
        k_cache, v_cache = append_kv(qkv, k_cache, v_cache, pos)
        return decode_attention_reference(qkv[:, 0, 0], k_cache, v_cache, pos + 1), k_cache, v_cache

    def mlp(self, x, w_fc, b_fc, w_proj, b_proj):
        return self.linear(gelu_tanh(self.linear(x, w_fc, b_fc)), w_proj, b_proj)

    @staticmethod
    def lm_head(h: jax.Array, wte) -> jax.Array:
        """h (B, C) @ wte.T (C, V) -> float32 logits (B, V); the int8 head is a ``QHead``: its int8 values (exact in
        the compute dtype) multiply h, the per-entry scales the float32 products."""
        if quantized(wte):
            y = jax.lax.dot_general(h, wte.q.astype(h.dtype), (((h.ndim - 1,), (1,)), ((), ())),
                                    precision=matmul_precision(h.dtype), preferred_element_type=jnp.float32)
            return y * wte.scale
        return jnp.dot(h, wte.T, precision=matmul_precision(h.dtype), preferred_element_type=jnp.float32)


def attention_reference(q, k, v, *, kv_lengths=None):
    """Causal attention in jnp with float32 logits and softmax: (B, T, H, D) -> (B, T, H, D).

    ``kv_lengths`` (B,) optionally masks keys at positions >= length (padded rows).
    """
    B, T, H, D = q.shape
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=matmul_precision(q.dtype),
                   preferred_element_type=jnp.float32) / math.sqrt(D)  # (B, H, T, T)
    mask = jnp.tril(jnp.ones((T, T), bool))[None, None]
    if kv_lengths is not None:
        mask = mask & (jnp.arange(T)[None, None, None, :] < kv_lengths[:, None, None, None])
    s = jnp.where(mask, s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    p = jnp.where(jnp.isnan(p), 0.0, p)  # rows with every key masked
    o = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, precision=matmul_precision(q.dtype),
                   preferred_element_type=jnp.float32)
    return o.astype(q.dtype)


def append_kv(qkv: jax.Array, k_cache: jax.Array, v_cache: jax.Array, pos: jax.Array):
    """Row b's new key and value (qkv (B, 1, 3, H, D)) into slot ``pos[b]`` of the (B, S, H, D) caches; in place
    when the caller donates or carries the caches."""
    rows = jnp.arange(qkv.shape[0])
    return k_cache.at[rows, pos].set(qkv[:, 0, 1]), v_cache.at[rows, pos].set(qkv[:, 0, 2])


def decode_attention_reference(q, k, v, lengths):
    """softmax(q·Kᵀ/√D)·V over the first ``lengths[b]`` cache slots, float32 logits and softmax.

    q (B, H, D), k/v (B, S, H, D), lengths (B,) -> (B, H, D).
    """
    B, S, H, D = k.shape
    s = jnp.einsum("bhd,bshd->bhs", q, k, precision=matmul_precision(q.dtype),
                   preferred_element_type=jnp.float32) / math.sqrt(D)  # (B, H, S)
    s = jnp.where(jnp.arange(S)[None, None, :] < lengths[:, None, None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)  # (B, H, S)
    o = jnp.einsum("bhs,bshd->bhd", p.astype(v.dtype), v, precision=matmul_precision(q.dtype),
                   preferred_element_type=jnp.float32)
    return o.astype(q.dtype)  # (B, H, D)


Ops = XlaOps  # the type every backend is
