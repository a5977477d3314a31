"""Tiled causal flash attention, forward (Pallas, Triton lowering).

Reads the packed QKV projection ``(B, T, 3, H, D)`` directly (the ``c_attn`` matmul's output reshaped for free),
so no split or transpose pass runs between the projection and attention; writes ``(B, T, H, D)``, which reshapes
for free into ``c_proj``'s input. One program per (batch, head, query tile); an online softmax (FlashAttention-2,
Algorithm 1) over key tiles in base 2 with float32 statistics; T×T is never materialised.

Causal tiles above the diagonal are skipped, not masked: the key loop stops at the diagonal, and runs in two
parts, the tiles fully below it without any mask and the diagonal/tail tiles with one. Any T (query and key tails
are masked on load and store), any head count, head_dim a power of two (GPT-2: 64). ``kv_lengths`` (B,) masks keys
at positions >= length, for batches of prompts of different lengths.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import check_blocks, compiler_params, default_interpret
from pallas_kernels.tuning import AttentionConfig, lookup

LOG2E = 1.4426950408889634
_NEG = -1e30  # finite "minus infinity": a fully masked row keeps exp2(s - m) = 0 instead of NaN


def _flash_kernel(qkv_ref,  # (B, T, 3·H, D), whole array: q heads, then k heads, then v heads
                  len_ref,  # (B,) int32 key lengths, or None
                  o_ref,  # (B, T, H, D), whole array
                  *, seq: int, heads: int, bq: int, bk: int, scale: float, precision):
    b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q_pos = i * bq + jnp.arange(bq)  # (BQ,)
    q = pltriton.load(qkv_ref.at[b, pl.ds(i * bq, bq), h, :], mask=(q_pos < seq)[:, None], other=0.0)
    q = (q.astype(jnp.float32) * (scale * LOG2E)).astype(q.dtype)  # (BQ, D), softmax in base 2
    kv_len = seq if len_ref is None else jnp.minimum(len_ref[b], seq)
    q_end = jnp.minimum((i + 1) * bq, kv_len)  # keys past the tile's last query or past kv_len never count
    n_full = jnp.minimum(i * bq, kv_len) // bk  # tiles wholly below the diagonal and inside kv_len: no mask
    n_all = pl.cdiv(q_end, bk)

    def step(j, carry, masked: bool):
        acc, m, l = carry
        k_pos = j * bk + jnp.arange(bk)
        kmask = (k_pos < kv_len)[:, None]
        k = pltriton.load(qkv_ref.at[b, pl.ds(j * bk, bk), heads + h, :], mask=kmask, other=0.0)  # (BK, D)
        v = pltriton.load(qkv_ref.at[b, pl.ds(j * bk, bk), 2 * heads + h, :], mask=kmask, other=0.0)  # (BK, D)
        s = pltriton.dot(q, k, trans_b=True, precision=precision)  # (BQ, BK) float32
        if masked:
            ok = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < kv_len)
            s = jnp.where(ok, s, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp2(s - m_new[:, None])
        alpha = jnp.exp2(m - m_new)
        l = l * alpha + jnp.sum(p, axis=1)
        acc = acc * alpha[:, None] + pltriton.dot(p.astype(v.dtype), v, precision=precision)
        return acc, m_new, l

    D = q.shape[-1]
    carry = (jnp.zeros((bq, D), jnp.float32), jnp.full((bq,), _NEG, jnp.float32), jnp.zeros((bq,), jnp.float32))
    carry = jax.lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
    acc, m, l = jax.lax.fori_loop(n_full, n_all, functools.partial(step, masked=True), carry)
    out = acc / jnp.where(l == 0.0, 1.0, l)[:, None]  # rows with no visible key (padding) give 0
    pltriton.store(o_ref.at[b, pl.ds(i * bq, bq), h, :], out.astype(o_ref.dtype), mask=(q_pos < seq)[:, None])


@functools.partial(jax.jit, static_argnames=("block_q", "block_k", "num_warps", "num_stages", "interpret"))
def flash_attention(qkv: jax.Array, kv_lengths: jax.Array | None = None, *, block_q: int | None = None,
                    block_k: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                    interpret: bool | None = None) -> jax.Array:
    """Causal softmax(QKᵀ/√D)V for packed ``qkv`` (B, T, 3, H, D) -> (B, T, H, D)."""
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"{qkv.shape=} must be (B, T, 3, H, D)")
    B, T, _, H, D = qkv.shape
    if D & (D - 1) or D < 16:
        raise ValueError(f"head_dim {D=} must be a power of two >= 16")
    if kv_lengths is not None and kv_lengths.shape != (B,):
        raise ValueError(f"{kv_lengths.shape=} must be ({B},)")
    cfg = lookup(AttentionConfig, seq=T, heads=H, head_dim=D, batch=B, dtype=qkv.dtype)
    bq, bk = block_q or cfg.block_q, block_k or cfg.block_k
    check_blocks(block_q=bq, block_k=bk)
    precision = jax.lax.Precision.HIGHEST if qkv.dtype == jnp.float32 else None
    kernel = functools.partial(_flash_kernel, seq=T, heads=H, bq=bq, bk=bk, scale=1.0 / math.sqrt(D), precision=precision)
    if kv_lengths is None:
        kernel = _no_lengths(kernel)
    packed = qkv.reshape(B, T, 3 * H, D)  # free: same memory order
    args = (packed,) if kv_lengths is None else (packed, kv_lengths.astype(jnp.int32))
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((B, T, H, D), qkv.dtype),
        grid=(B, H, pl.cdiv(T, bq)),
        in_specs=[pl.no_block_spec] * len(args),
        out_specs=pl.no_block_spec,
        compiler_params=compiler_params(num_warps or cfg.num_warps, num_stages or cfg.num_stages),
        interpret=default_interpret(interpret),
        name="jaxgpt_flash_attention",
    )(*args)


def _no_lengths(kernel):
    def k(qkv_ref, o_ref):
        kernel(qkv_ref, None, o_ref)
    return k


def flash_attention_reference(qkv, kv_lengths=None):
    """Pure jnp, float32 logits and softmax: (B, T, 3, H, D) -> (B, T, H, D)."""
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    B, T, H, D = q.shape
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST) / math.sqrt(D)
    mask = jnp.tril(jnp.ones((T, T), bool))[None, None]
    if kv_lengths is not None:
        mask = mask & (jnp.arange(T)[None, None, None, :] < kv_lengths[:, None, None, None])
    s = jnp.where(mask, s, -jnp.inf)
    p = jnp.nan_to_num(jax.nn.softmax(s, axis=-1))
    o = jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return o.astype(qkv.dtype)
