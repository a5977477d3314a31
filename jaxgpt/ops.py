"""The op registry: the only switch between backends.

The model calls ``ops.layer_norm``, ``ops.add_layer_norm``, ``ops.qkv``, ``ops.attention``,
``ops.decode_attention``, ``ops.linear``, ``ops.mlp`` and ``ops.lm_head``. ``XlaOps`` writes each in plain jnp (XLA
fuses what it can; attention goes to cuDNN for bf16/f16 on a GPU). Other backends subclass it and override the ops
they have kernels for, so any op without a kernel falls back to the jnp version. A decode step first offers the
whole block stack and the LM head to ``ops.decode_logits`` (a backend with a one-kernel-a-block decode takes it; XLA
returns None and the model runs the ops above).

A backend may hand a value of its own between two of its ops (the Pallas backend's decode step passes a matmul's
unfinished split-K partials to the next kernel, which finishes them): the model passes op outputs along untouched
and never looks inside them except for the arrays ``qkv`` and ``attention`` document. Projection weights are arrays
or, in a quantized model, ``QWeight``s (int8 / packed int4 values and their scales, ``jaxgpt.quantize``).

Precision contract: LayerNorm statistics and softmax run in float32; matmuls take the compute dtype and accumulate
in float32 (float32 models use ``Precision.HIGHEST`` so a GPU does not silently drop to TF32); logits are float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.quant_matmul import QHead, QWeight, dequantize


def matmul_precision(dtype) -> lax.Precision:
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GPT-2's GELU, tanh form (HF ``gelu_new``)."""
    return jax.nn.gelu(x, approximate=True)


class BlockParams(NamedTuple):
    """One block's parameters as arrays (HF names, linear weights (in, out)), for backends that run a whole block's
    decode step at once (``decode_logits``)."""

    ln_1_w: jax.Array
    ln_1_b: jax.Array
    c_attn_w: "jax.Array | QWeight"
    c_attn_b: jax.Array
    c_proj_w: "jax.Array | QWeight"
    c_proj_b: jax.Array
    ln_2_w: jax.Array
    ln_2_b: jax.Array
    c_fc_w: "jax.Array | QWeight"
    c_fc_b: jax.Array
    mlp_proj_w: "jax.Array | QWeight"
    mlp_proj_b: jax.Array


class XlaOps:
    """Reference backend: jnp everywhere, XLA/cuDNN decide the kernels."""

    name = "xla"

    @staticmethod
    def decode_logits(x, blocks: list[BlockParams], ln_f: tuple, head, cache, pos, *, n_head: int, eps: float):
        """One decode step through every block, ``ln_f`` and the LM head at once: x (B, 1, C) embeddings ->
        (float32 logits (B, V), the cache with the step's keys and values), or None where the backend has no such
        path (the model then runs the per-op path). ``head`` is the LM head's weight as ``lm_head`` takes it. XLA
        has none."""
        return None

    @staticmethod
    def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, *, eps: float) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * lax.rsqrt(var + eps) * w.astype(jnp.float32) + b.astype(jnp.float32)
        return y.astype(x.dtype)

    @classmethod
    def add_layer_norm(cls, x, residual, w, b, *, eps: float):
        """``h = residual + x; return h, LN(h)``."""
        h = residual + x
        return h, cls.layer_norm(h, w, b, eps=eps)

    @staticmethod
    def linear(x: jax.Array, w: "jax.Array | QWeight", b: jax.Array) -> jax.Array:
        """x (..., K) @ w (K, N) + b; a quantized ``w`` is dequantized in the compute dtype (XLA fuses it)."""
        if isinstance(w, QWeight):
            w = dequantize(w, x.dtype)
        return (jnp.dot(x, w, precision=matmul_precision(x.dtype)) + b).astype(x.dtype)

    @classmethod
    def qkv(cls, x: jax.Array, w: jax.Array, b: jax.Array, *, n_head: int) -> jax.Array:
        """x (B, T, C) @ w (C, 3C) + b -> packed qkv (B, T, 3, H, D) (a free reshape of the matmul output)."""
        B, T, C = x.shape
        return cls.linear(x, w, b).reshape(B, T, 3, n_head, C // n_head)  # (B, T, 3, H, D)

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

    @classmethod
    def mlp(cls, x, w_fc, b_fc, w_proj, b_proj):
        return cls.linear(gelu_tanh(cls.linear(x, w_fc, b_fc)), w_proj, b_proj)

    @staticmethod
    def lm_head(h: jax.Array, wte: "jax.Array | QHead") -> jax.Array:
        """h (B, C) @ wte.T (C, V) -> float32 logits (B, V); the int8 head is a ``QHead``: its int8 values (exact in
        the compute dtype) multiply h, the per-entry scales the float32 products."""
        if isinstance(wte, QHead):
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


Ops = type[XlaOps]

BACKENDS: dict[str, Ops] = {"xla": XlaOps}


def get_ops(backend: str) -> Ops:
    """The ops class for ``backend`` (``xla`` or ``pallas``)."""
    if backend == "pallas" and "pallas" not in BACKENDS:
        from jaxgpt import ops_pallas  # noqa: F401  (registers itself)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of xla, pallas")
    return BACKENDS[backend]
