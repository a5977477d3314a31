"""The Pallas backend: every op of a block on our own kernels (``pallas_kernels``).

Per block: ``c_attn`` on the tiled matmul (its output reshaped for free to the packed (B, T, 3, H, D) layout the
flash-attention kernel reads), flash attention, ``c_proj`` on the matmul, the fused residual+LayerNorm kernel for
``ln_2`` and the next block's ``ln_1`` (and ``ln_f``), and the MLP kernel (variant chosen per shape). Off a GPU the
kernels run in Pallas' interpreter, so this backend works (slowly) everywhere. The LM head at the last position
stays on XLA (one (B, C) x (C, V) product with float32 output), except in a decode step on the block kernels, where
ln_f and the head run as one kernel (``lm_head_decode``).

A decode step (T = 1, at most 16 rows) reads every weight once for a handful of rows, so launches matter as much as
bandwidth. There each matmul splits K over programs and leaves its float32 partials unfinished (``SplitK``); the
next kernel finishes them on load: decode attention adds the c_attn bias and appends K/V to the cache, the MLP's
second matmul applies c_fc's bias and GELU, the residual+LayerNorm kernel adds c_proj's bias: eight kernels a layer
instead of sixteen. The other decode step finishes the split-K matmuls in XLA epilogues and runs the flash-decoding
kernel after an XLA scatter into the cache. Which one runs is chosen by shape from H100 measurements (``_fused``);
``JAXGPT_FUSED_DECODE=1`` or ``0`` forces one. Quantized projections (``QWeight``) go to the int8/int4 matmul
kernel (``JAXGPT_FUSED_QUANT=1``: fused like the float step). On Hopper GPUs prefill attention runs the Mosaic GPU
kernel (wgmma, TMA, warp specialisation); the prefill projections take cuBLAS (faster than both of ours at every
GPT-2 shape measured), except c_fc from ``OURS_GELU_ROWS`` rows up, whose GELU epilogue the Mosaic GPU matmul fuses
where its tiles fit (``matmul_mgpu.plan``); elsewhere the Triton kernels. ``JAXGPT_ATTENTION=mosaic|triton`` and
``JAXGPT_MATMUL=xla|mosaic|triton`` force one.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp

from jaxgpt.ops import BACKENDS, XlaOps, append_kv, gelu_tanh
from pallas_kernels.decode_attention import decode_attention, decode_attention_append
from pallas_kernels.decode_layer import LayerWeights, counter_slots, decode_layer
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.layer_norm import add_layer_norm
from pallas_kernels.lm_head import lm_head_decode
from pallas_kernels.matmul import matmul, matmul_split_k
from pallas_kernels.mlp import mlp
from pallas_kernels.partials import SplitK, resolve
from pallas_kernels.quant_matmul import QHead, QWeight, quant_matmul, quant_matmul_split_k
from pallas_kernels.tuning import MosaicAttentionConfig, lookup

DECODE_ROWS = 16  # decode steps with at most this many rows run split-K matmuls whose epilogues the next kernel runs
# JAXGPT_ATTENTION=mosaic|triton forces prefill attention's kernel; unset: the Mosaic GPU kernel on Hopper GPUs
# (head_dim 64, bf16/f16), measured faster than the Triton one at every GPT-2 shape on the H100, else Triton.
ATTENTION = os.environ.get("JAXGPT_ATTENTION", "")


def _hopper() -> bool:
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")


# JAXGPT_MATMUL=xla|mosaic|triton forces the prefill projections' kernel; unset: on Hopper GPUs, cuBLAS (XLA's dot,
# the XLA backend's own numerics), except big c_fc (below); else the Mosaic GPU matmul where its tiling fits the
# shape (bf16/f16), else the Triton one. H100, M = 8192, µs, cuBLAS vs our best (bench/NOTES.md session 4): 768->2304
# 42.9 vs 55.5, 768->3072 57.8 vs 68.9, 3072->768 50.9 vs 66.5, 1600->4800 170.8 vs 216.9, 1600->6400 224.0 vs
# 261.6, 6400->1600 228.6 vs 290.7: at prefill sizes our matmuls lose at every GPT-2 shape, so the backend takes
# cuBLAS there and keeps its own kernels for attention, LayerNorm and decode, where they win. Except c_fc: cuBLAS
# fuses the bias but not GPT-2's GELU, which then costs an XLA pass over the (M, 4C) output (83 µs a gpt2-xl layer,
# session 7 call 9), while our matmuls apply it in their epilogue; so GELU projections stay on ours from
# OURS_GELU_ROWS rows up. Below that the GELU pass is small and our matmuls' few M tiles leave most SMs idle: at
# B1 T128 (128 rows, weight-bound) the Pallas backend took 0.898 ms (gpt2) / 5.310 (gpt2-xl) with our matmuls
# against XLA's 0.557 / 3.311 (session 8, call 4), so every projection of a small prefill takes cuBLAS.
MATMUL = os.environ.get("JAXGPT_MATMUL", "")
OURS_GELU_ROWS = 4096  # measured at 8192 (ours win) and 128 rows (cuBLAS wins); between them not measured


def _cublas_matmul(x, w, activation: str = "none") -> bool:
    """Whether a prefill projection ``act(x (..., K) @ w + b)`` runs on cuBLAS (XLA's dot) rather than one of our
    kernels."""
    if MATMUL in ("mosaic", "triton") or isinstance(w, QWeight):
        return False
    small = math.prod(x.shape[:-1]) < OURS_GELU_ROWS
    return MATMUL == "xla" or (_hopper() and (activation == "none" or small))


def _mosaic_matmul(x, w) -> bool:
    from pallas_kernels import matmul_mgpu
    if MATMUL == "triton" or matmul_mgpu.plgpu is None or isinstance(w, QWeight) or w.dtype != x.dtype \
            or x.dtype not in (jnp.bfloat16, jnp.float16):
        return False
    rows = math.prod(x.shape[:-1])
    if matmul_mgpu.plan(rows, w.shape[1], w.shape[0]) is None:
        return False
    return MATMUL == "mosaic" or _hopper()


def _projection(x, w, b, activation: str = "none"):
    """``act(x @ w + b)`` at prefill sizes: cuBLAS where it wins (``_cublas_matmul``), the Mosaic GPU matmul where it
    applies, else the Triton one."""
    if _cublas_matmul(x, w, activation):  # exactly the XLA backend's ops, rounding included
        y = XlaOps.linear(x, w, b)
        return gelu_tanh(y) if activation == "gelu_tanh" else y
    if _mosaic_matmul(x, w):
        from pallas_kernels.matmul_mgpu import matmul_mgpu
        return matmul_mgpu(x, w, b, activation=activation)
    return matmul(x, w, b, activation=activation)


def _mosaic_attention(qkv) -> bool:
    if ATTENTION == "triton" or qkv.shape[-1] != 64 or qkv.dtype not in (jnp.bfloat16, jnp.float16):
        return False
    return ATTENTION == "mosaic" or _hopper()


# JAXGPT_FUSED_QUANT=1: the quantized decode step fused like the float one (partials finished by the next kernel,
# no XLA epilogues). Opt-in: on the H100 it lost (session 5, gpt2-xl B=1 int8 2.403 vs 2.208 ms/token, int4 2.718
# vs 2.142; the quantized prologues cost more than the launches they save).
FUSED_QUANT = os.environ.get("JAXGPT_FUSED_QUANT", "") == "1"
# JAXGPT_FUSED_DECODE: "1" always the fused decode step, "0" never, unset: by shape (``_fused``).
FUSED_DECODE: bool | None = {"1": True, "0": False}.get(os.environ.get("JAXGPT_FUSED_DECODE", ""))


def _fused(rows: int, width: int) -> bool:
    """Whether a decode step of ``rows`` rows at model width ``width`` takes the fused path.

    Measured on the H100 (bf16, ms/token, fused vs not; bench/NOTES.md): gpt2 B1 0.573 vs 0.484, gpt2 B8 0.517 vs
    0.585, gpt2-xl B1 2.62 vs 2.69, gpt2-xl B8 2.87 vs 3.13. One row at a narrow width loses: there the fused
    kernels' in-kernel epilogues cost more than the launches they save."""
    if FUSED_DECODE is not None:
        return FUSED_DECODE
    return rows > 1 or width >= 1024


# JAXGPT_DECODE_LAYER: "1" a decode step runs each block as one kernel (``pallas_kernels.decode_layer``), "0" never,
# unset: by shape on a GPU (``_block_kernel``); off a GPU the per-op path (the block kernel's interpreter form is
# five calls, no faster).
DECODE_LAYER: bool | None = {"1": True, "0": False}.get(os.environ.get("JAXGPT_DECODE_LAYER", ""))


# int8 (per-channel) models decode on the block kernel too where it applies; JAXGPT_DECODE_LAYER_INT8=0 keeps them
# per-op. H100, gpt2-xl B=1, same run (session 6, call 1): 2.278 ms/token on the block kernel vs 2.387 per-op.
DECODE_LAYER_INT8 = os.environ.get("JAXGPT_DECODE_LAYER_INT8", "1") != "0"


# JAXGPT_FUSED_HEAD=0: after the block kernels, ln_f and the LM head as two kernels (the residual+LayerNorm kernel,
# XLA's cuBLAS product) instead of ``lm_head_decode``. Read when a step is traced.
FUSED_HEAD = os.environ.get("JAXGPT_FUSED_HEAD", "1") != "0"


def _block_kernel(rows: int, width: int) -> bool:
    """Whether a decode step of ``rows`` rows at model width ``width`` runs each block as one kernel.

    Measured on the H100 (bf16, ms/token, block kernel vs per-op, same run; bench/NOTES.md session 5, final plan):
    gpt2 B1 0.447 vs 0.483, gpt2-xl B1 2.323 vs 2.444, gpt2 B8 0.632 vs 0.538, gpt2-xl B8 4.332 vs 2.835. One row
    pays launches the most; at eight rows the block kernel's per-program prologues (every program normalises every
    row) and 16-row tiles cost more than the launches it saves."""
    del width  # one row wins at gpt2's and gpt2-xl's widths alike
    if DECODE_LAYER is not None:
        return DECODE_LAYER
    return jax.default_backend() == "gpu" and rows == 1


def _decode_rows(x: jax.Array) -> int | None:
    """Rows of a decode step's (B, 1, C) activations, if the fused decode path applies; else None."""
    if x.ndim == 3 and x.shape[1] == 1 and x.shape[0] <= DECODE_ROWS and _fused(x.shape[0], x.shape[2]):
        return x.shape[0]
    return None


class PallasOps(XlaOps):
    name = "pallas"

    @staticmethod
    def decode_logits(x, blocks, ln_f, head, cache, pos, *, n_head: int, eps: float):
        """Each block's decode step as one kernel (``decode_layer``; its MLP partials are finished by the next
        block's kernel), then ``ln_f`` and the tied LM head (or the int8 head, ``QHead``) as one kernel
        (``lm_head_decode``). ``JAXGPT_FUSED_HEAD=0``: the residual+LayerNorm kernel, then the head's product."""
        done = PallasOps._block_stack(x, blocks, cache, pos, n_head=n_head, eps=eps)
        if done is None:
            return None
        r, parts, cache = done
        if FUSED_HEAD and (isinstance(head, QHead) or head.dtype == r.dtype):  # wte, or the int8 head (V, C)
            return lm_head_decode(r, parts, *ln_f, head, eps=eps), cache  # (B, V) float32
        _, normed = add_layer_norm(parts, r, *ln_f, eps=eps)  # (B, C)
        return PallasOps.lm_head(normed, head), cache

    @staticmethod
    def _block_stack(x, blocks, cache, pos, *, n_head: int, eps: float):
        """Every block's decode step as one kernel each: (the last block's residual (B, C), its MLP's ``SplitK``
        partials, the cache), or None where the block kernel does not apply."""
        B, T, C = x.shape
        D = C // n_head
        quant = [w for p in blocks for w in p if isinstance(w, QWeight)]
        int8 = DECODE_LAYER_INT8 and len(quant) == 4 * len(blocks) and all(
            (w.bits, w.group) == (8, None) for w in quant)
        if T != 1 or B > DECODE_ROWS or not _block_kernel(B, C) or D < 16 or D & (D - 1) or (quant and not int8):
            return None  # the per-op path serves int4 (and int8 when opted out) and head sizes the kernel lacks
        r = x.reshape(B, C)  # (B, C)
        parts = None  # the first block's input is the embedding alone (no partials to finish, no zeros to make)
        counters = jnp.zeros((len(blocks) * counter_slots(B, n_head),), jnp.int32)
        ks, vs = [], []
        for i, p in enumerate(blocks):
            r, parts, k, v, counters = decode_layer(r, parts, LayerWeights(*p), cache.k[i], cache.v[i], pos,
                                                    counters, jnp.full((1,), i, jnp.int32), eps=eps, n_head=n_head)
            ks.append(k)
            vs.append(v)
        return r, parts, type(cache)(tuple(ks), tuple(vs))

    @staticmethod
    def layer_norm(x, w, b, *, eps: float):
        return add_layer_norm(x, None, w, b, eps=eps)[1]

    @staticmethod
    def add_layer_norm(x, residual, w, b, *, eps: float):
        return add_layer_norm(x, residual, w, b, eps=eps)  # x may be SplitK partials: finished in the kernel

    @staticmethod
    def linear(x, w, b):
        if isinstance(w, QWeight):  # int8/int4 tiles dequantized in registers
            if FUSED_QUANT and _decode_rows(x):  # partials out: the residual+LayerNorm kernel finishes them
                return quant_matmul_split_k(x.reshape(x.shape[0], -1), w, b)
            return quant_matmul(resolve(x), w, b)
        if _decode_rows(x):  # c_proj of a decode step: the residual+LayerNorm kernel finishes it
            return matmul_split_k(x.reshape(x.shape[0], -1), w, b)
        return _projection(x, w, b)

    @staticmethod
    def qkv(x, w, b, *, n_head: int):
        B, T, C = x.shape
        if isinstance(w, QWeight):
            if FUSED_QUANT and _decode_rows(x):  # the decode-attention kernel finishes the partials
                p = quant_matmul_split_k(x.reshape(B, C), w, b)
                return dataclasses.replace(p, view=(B, T, 3, n_head, C // n_head))
            return quant_matmul(x, w, b).reshape(B, T, 3, n_head, C // n_head)  # (B, T, 3, H, D)
        if _decode_rows(x):  # the decode-attention kernel finishes it (sum, bias) and appends K/V
            p = matmul_split_k(x.reshape(B, C), w, b)
            return dataclasses.replace(p, view=(B, T, 3, n_head, C // n_head))
        return _projection(x, w, b).reshape(B, T, 3, n_head, C // n_head)  # (B, T, 3, H, D)

    @staticmethod
    def attention(qkv: jax.Array) -> jax.Array:
        qkv = resolve(qkv)  # a one-token prefill's qkv may still be split-K partials
        B, T, _, H, D = qkv.shape
        if _mosaic_attention(qkv):
            from pallas_kernels.flash_attention_mgpu import flash_attention_mgpu
            cfg = lookup(MosaicAttentionConfig, seq=T, heads=H, head_dim=D, batch=B, dtype=qkv.dtype)
            return flash_attention_mgpu(qkv, block_kv=cfg.block_kv, stages=cfg.stages, order=cfg.order)
        return flash_attention(qkv)

    @staticmethod
    def decode_attention(qkv, k_cache, v_cache, pos):
        B, _, H, D = k_cache.shape
        if B <= DECODE_ROWS and _fused(B, H * D):  # qkv may be SplitK partials: finished, appended, attended at once
            return decode_attention_append(qkv, k_cache, v_cache, pos)
        k_cache, v_cache = append_kv(qkv, k_cache, v_cache, pos)  # (B, S, H, D) each, XLA scatter
        return decode_attention(qkv[:, 0, 0], k_cache, v_cache, pos + 1), k_cache, v_cache

    @staticmethod
    def mlp(x, w_fc, b_fc, w_proj, b_proj):
        if isinstance(w_fc, QWeight) and isinstance(w_proj, QWeight) and FUSED_QUANT and _decode_rows(x):
            h = quant_matmul_split_k(x.reshape(x.shape[0], -1), w_fc, b_fc, activation="gelu_tanh")
            return quant_matmul_split_k(h, w_proj, b_proj)  # c_fc's bias + GELU in its prologue
        if isinstance(w_fc, QWeight) or isinstance(w_proj, QWeight):
            h = PallasOps.linear_act(x, w_fc, b_fc, "gelu_tanh")  # (B, T, 4C)
            return PallasOps.linear_act(h, w_proj, b_proj, "none")  # (B, T, C)
        if _decode_rows(x):  # c_fc's epilogue (bias, GELU) runs as c_proj's prologue; LayerNorm finishes c_proj
            h = matmul_split_k(x.reshape(x.shape[0], -1), w_fc, b_fc, activation="gelu_tanh")
            return matmul_split_k(h, w_proj, b_proj)
        h_spec = jax.ShapeDtypeStruct(x.shape[:-1] + w_proj.shape[:1], x.dtype)  # (B, T, 4C)
        if any(_cublas_matmul(a, w, act) or _mosaic_matmul(a, w)
               for a, w, act in ((x, w_fc, "gelu_tanh"), (h_spec, w_proj, "none"))):
            # two matmuls, each on its faster kernel
            return _projection(_projection(x, w_fc, b_fc, "gelu_tanh"), w_proj, b_proj)
        return mlp(x, w_fc, b_fc, w_proj, b_proj)


    @staticmethod
    def lm_head(h, wte):
        return XlaOps.lm_head(h, wte)  # the int8 head too (XLA widens its (V, C) int8 operand inside the product)

    @staticmethod
    def linear_act(x, w, b, activation: str):
        """``act(x @ w + b)`` on the quantized or the float matmul kernel."""
        if isinstance(w, QWeight):
            return quant_matmul(x, w, b, activation=activation)
        return _projection(x, w, b, activation=activation)


BACKENDS["pallas"] = PallasOps
