"""The Pallas backend: every op of a block on our own kernels (``pallas_kernels``), chosen per op and shape by
``jaxgpt.kernels``.

Prefill, per block: ``c_attn`` on the chosen matmul (its output reshaped for free to the packed (B, T, 3, H, D)
layout the attention kernels read), flash attention (Mosaic GPU on Hopper, else Triton), ``c_proj``, the fused
residual+LayerNorm kernel for ``ln_2`` and the next block's ``ln_1`` (and ``ln_f``), and the MLP. Off a GPU the
kernels run in Pallas' interpreter, so this backend works (slowly) everywhere. The LM head at the last position
stays on XLA (one (B, C) x (C, V) product with float32 output).

A decode step (T = 1, at most ``DECODE_ROWS`` rows) reads every weight once for a handful of rows, so launches
matter as much as bandwidth. It runs in one of three forms (``kernels.choose_decode``):

* ``block``: each block is one kernel (``decode_layer``: persistent programs, grid-wide barriers between its five
  phases); ln_f and the tied LM head (or the int8 head) another (``lm_head_decode``).
* ``fused``: each matmul splits K over programs and leaves its float32 partials unfinished (``SplitK``); the next
  kernel finishes them on load: decode attention adds the c_attn bias and appends K/V to the cache, the MLP's
  second matmul applies c_fc's bias and GELU, the residual+LayerNorm kernel adds c_proj's bias. Eight kernels a
  layer.
* ``unfused``: each op its own kernel; the projections take the prefill matmul choice, an XLA scatter writes the
  cache, then the flash-decoding kernel.

Quantized projections (``QWeight``) run the int8/int4 matmul kernel (``quant_matmul``) in every form but ``block``,
which takes int8 per-channel weights too.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgpt import kernels as K
from jaxgpt.ops import XlaOps, append_kv, gelu_tanh, quantized
from pallas_kernels._common import default_interpret
from pallas_kernels.decode_attention import decode_attention, decode_attention_append
from pallas_kernels.decode_layer import LayerWeights, counter_slots, decode_layer
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.layer_norm import add_layer_norm
from pallas_kernels.lm_head import lm_head_decode
from pallas_kernels.matmul import matmul, matmul_split_k
from pallas_kernels.mlp import mlp
from pallas_kernels.partials import SplitK, resolve
from pallas_kernels.quant_matmul import quant_matmul
from pallas_kernels.tuning import MosaicAttentionConfig, lookup


class _BlockCarry(NamedTuple):
    """What one block kernel hands the next in a decode step: the residual (B, C), the last MLP matmul's
    ``SplitK`` partials (None before the first block) and the step's barrier counters."""

    r: jax.Array
    parts: object
    counters: jax.Array


@dataclasses.dataclass(frozen=True)
class PallasOps(XlaOps):
    name = "pallas"

    @property
    def interpreted(self) -> bool:
        """Whether the kernels run in Pallas' interpreter (no GPU): exact, but many times slower than compiled."""
        return default_interpret(None)

    # ------------------------------------------------------------------------------------------ decode forms

    def _fused(self, x) -> bool:
        """Whether ``x``, a decode step's (B, 1, C) activation (or a fused step's partials), takes the fused form's
        split-K kernels (``kernels.choose_decode_ops``); prefill-shaped activations never do."""
        if isinstance(x, SplitK):
            return True
        return x.ndim == 3 and x.shape[1] == 1 and \
            K.choose_decode_ops(self.kernels, rows=x.shape[0], width=x.shape[2]) == "fused"

    def block_decode(self, x, blocks, *, n_head: int) -> bool:
        B, T, C = x.shape
        quant = {("int8" if (w.bits, w.group) == (8, None) else "int4") for p in blocks for w in
                 (p.c_attn_w, p.c_proj_w, p.c_fc_w, p.mlp_proj_w) if quantized(w)}
        mixed = len(quant) > 1 or (quant and any(not quantized(w) for p in blocks for w in
                                                 (p.c_attn_w, p.c_proj_w, p.c_fc_w, p.mlp_proj_w)))
        if T != 1 or mixed:
            return False
        form = K.choose_decode(self.kernels, rows=B, width=C, head_dim=C // n_head, quant=next(iter(quant), None))
        return form == "block"

    def decode_start(self, x, n_layer: int, *, n_head: int):
        B, _, C = x.shape
        counters = jnp.zeros((n_layer * counter_slots(B, n_head),), jnp.int32)
        return _BlockCarry(x.reshape(B, C), None, counters)  # the first block's input is the embedding alone

    def decode_block(self, carry, p, k_cache, v_cache, pos, *, layer: int, n_head: int, eps: float):
        r, parts, k_cache, v_cache, counters = decode_layer(
            carry.r, carry.parts, LayerWeights(*p), k_cache, v_cache, pos, carry.counters,
            jnp.full((1,), layer, jnp.int32), eps=eps, n_head=n_head)
        return _BlockCarry(r, parts, counters), k_cache, v_cache

    def decode_head(self, carry, ln_w, ln_b, head, *, eps: float):
        if K.choose_head(self.kernels) == "fused" and (quantized(head) or head.dtype == carry.r.dtype):
            return lm_head_decode(carry.r, carry.parts, ln_w, ln_b, head, eps=eps)  # (B, V) float32
        _, normed = add_layer_norm(carry.parts, carry.r, ln_w, ln_b, eps=eps)  # (B, C)
        return self.lm_head(normed, head)

    # ------------------------------------------------------------------------------------------ per-op

    @staticmethod
    def layer_norm(x, w, b, *, eps: float):
        return add_layer_norm(x, None, w, b, eps=eps)[1]

    def add_layer_norm(self, x, residual, w, b, *, eps: float):
        return add_layer_norm(x, residual, w, b, eps=eps)  # x may be SplitK partials: finished in the kernel

    def _projection(self, x, w, b, activation: str = "none"):
        """``act(x @ w + b)`` for a float weight at prefill sizes, on the kernel ``choose_matmul`` picks."""
        kind = K.choose_matmul(self.kernels, rows=x.size // x.shape[-1], n=w.shape[1], kdim=w.shape[0],
                               dtype=x.dtype, w_dtype=w.dtype, activation=activation)
        if kind == "xla":  # exactly the XLA backend's ops, rounding included
            y = XlaOps.linear(x, w, b)
            return gelu_tanh(y) if activation == "gelu_tanh" else y
        if kind == "mosaic":
            from pallas_kernels.matmul_mgpu import matmul_mgpu
            return matmul_mgpu(x, w, b, activation=activation)
        return matmul(x, w, b, activation=activation)

    def linear_act(self, x, w, b, activation: str = "none"):
        """``act(x @ w + b)``, unfinished split-K partials in a fused decode step."""
        if quantized(w):  # int8/int4 tiles dequantized in registers
            return quant_matmul(resolve(x), w, b, activation=activation)
        if self._fused(x):  # the next kernel finishes the partials
            return matmul_split_k(x if isinstance(x, SplitK) else x.reshape(x.shape[0], -1), w, b,
                                  activation=activation)
        return self._projection(x, w, b, activation)

    def linear(self, x, w, b):
        return self.linear_act(x, w, b)

    def qkv(self, x, w, b, *, n_head: int):
        B, T, C = x.shape
        p = self.linear_act(x, w, b)  # (B, T, 3C), or SplitK partials that decode attention finishes
        if isinstance(p, jax.Array):
            return p.reshape(B, T, 3, n_head, C // n_head)  # (B, T, 3, H, D)
        return dataclasses.replace(p, view=(B, T, 3, n_head, C // n_head))

    def attention(self, qkv):
        qkv = resolve(qkv)  # a one-token prefill's qkv may still be split-K partials
        B, T, _, H, D = qkv.shape
        kind = K.choose_attention(self.kernels, head_dim=D, dtype=qkv.dtype)
        if kind == "mosaic":
            from pallas_kernels.flash_attention_mgpu import flash_attention_mgpu
            cfg = lookup(MosaicAttentionConfig, seq=T, heads=H, head_dim=D, batch=B, dtype=qkv.dtype)
            return flash_attention_mgpu(qkv, block_kv=cfg.block_kv, stages=cfg.stages, order=cfg.order)
        if kind == "xla":
            return XlaOps.attention(qkv)
        return flash_attention(qkv)

    def decode_attention(self, qkv, k_cache, v_cache, pos):
        B, _, H, D = k_cache.shape
        if K.choose_decode_ops(self.kernels, rows=B, width=H * D) == "fused":
            # qkv may be SplitK partials: finished, appended, attended at once
            return decode_attention_append(qkv, k_cache, v_cache, pos)
        qkv = resolve(qkv)
        k_cache, v_cache = append_kv(qkv, k_cache, v_cache, pos)  # (B, S, H, D) each, XLA scatter
        return decode_attention(qkv[:, 0, 0], k_cache, v_cache, pos + 1), k_cache, v_cache

    def mlp(self, x, w_fc, b_fc, w_proj, b_proj):
        if quantized(w_fc) or quantized(w_proj) or self._fused(x):
            # c_fc's epilogue (bias, GELU) runs as c_proj's prologue when fused; LayerNorm finishes c_proj
            return self.linear_act(self.linear_act(x, w_fc, b_fc, "gelu_tanh"), w_proj, b_proj)
        rows = x.size // x.shape[-1]
        kinds = {K.choose_matmul(self.kernels, rows=rows, n=w.shape[1], kdim=w.shape[0], dtype=x.dtype,
                                 w_dtype=w.dtype, activation=act) for w, act in ((w_fc, "gelu_tanh"), (w_proj, "none"))}
        if kinds != {"triton"}:  # two matmuls, each on its faster kernel
            return self._projection(self._projection(x, w_fc, b_fc, "gelu_tanh"), w_proj, b_proj)
        return mlp(x, w_fc, b_fc, w_proj, b_proj)

    @staticmethod
    def lm_head(h, wte):
        return XlaOps.lm_head(h, wte)  # the int8 head too (XLA widens its (V, C) int8 operand inside the product)
