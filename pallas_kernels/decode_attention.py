"""Decode attention, "flash-decoding": one new query per (row, head) against the KV cache (Pallas, Triton lowering).

Generation reads the whole cache every step with a single query, so a (row, head) program alone leaves most of
the GPU idle at batch 1-8. The cache axis is split over ``num_splits`` programs; each runs an online softmax over
its slice (float32 statistics, base 2) and writes its partial output and log-sum-exp; a small jnp step merges the
splits. Only slots ``< lengths[b]`` count: the loop of each program stops at the row's length, so splits past it
do no work. With one query row there is no matrix product to feed the tensor cores: scores and the weighted sum
are vector reductions, and the kernel is bound by reading K and V.

Layouts: q (B, H, D), cache k/v (B, S, H, D) (the model's cache layout; slot ``s`` of head ``h`` is one contiguous
D-vector), lengths (B,) int32 -> (B, H, D).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import check_blocks, compiler_params, default_interpret
from pallas_kernels.partials import SplitK, finish
from pallas_kernels.tuning import DecodeAttentionConfig, lookup

LOG2E = 1.4426950408889634
_NEG = -1e30  # finite "minus infinity": an empty split keeps exp2(s - m) = 0 instead of NaN


def _decode_kernel(q_ref,  # (B, H, D) whole array
                   k_ref, v_ref,  # (B, S, H, D) whole arrays
                   len_ref,  # (B,) int32
                   o_ref,  # (B, H, splits, D) float32: each split's normalised output
                   lse_ref,  # (B, H, splits, D) float32: each split's log2-sum-exp, broadcast over D
                   *, bk: int, chunk: int, scale: float):
    b, h, sp = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q = pltriton.load(q_ref.at[b, h, :]).astype(jnp.float32) * (scale * LOG2E)  # (D,)
    D = q.shape[0]
    init = (jnp.zeros((D,), jnp.float32), jnp.float32(_NEG), jnp.float32(0.0))
    _attend_split(q, k_ref, v_ref, o_ref, lse_ref, init, b=b, h=h, sp=sp, lo=sp * chunk,
                  hi=jnp.minimum(sp * chunk + chunk, len_ref[b]), bk=bk)


def _attend_split(q, k_ref, v_ref, o_ref, lse_ref, carry, *, b, h, sp, lo, hi, bk: int):
    """Both kernels' split: online softmax of q (D,) over cache slots [lo, hi) of (row b, head h), starting from
    ``carry`` = (acc (D,), m, l); stores the split's normalised output and log2-sum-exp (broadcast over D) unless
    ``o_ref`` is None, and returns them ((D,), scalar)."""

    def step(j, carry):
        acc, m, l = carry
        k_pos = lo + j * bk + jnp.arange(bk)  # (BK,)
        ok = k_pos < hi
        k = pltriton.load(k_ref.at[b, pl.ds(lo + j * bk, bk), h, :], mask=ok[:, None], other=0.0)  # (BK, D)
        v = pltriton.load(v_ref.at[b, pl.ds(lo + j * bk, bk), h, :], mask=ok[:, None], other=0.0)  # (BK, D)
        s = jnp.sum(k.astype(jnp.float32) * q[None, :], axis=1)  # (BK,)
        s = jnp.where(ok, s, _NEG)
        m_new = jnp.maximum(m, jnp.max(s))
        p = jnp.exp2(s - m_new)  # (BK,)
        alpha = jnp.exp2(m - m_new)
        l = l * alpha + jnp.sum(p)
        acc = acc * alpha + jnp.sum(p[:, None] * v.astype(jnp.float32), axis=0)  # (D,)
        return acc, m_new, l

    n = pl.cdiv(jnp.maximum(hi - lo, 0), bk)
    acc, m, l = jax.lax.fori_loop(0, n, step, carry)
    nonempty = l > 0.0
    out = acc / jnp.where(nonempty, l, 1.0)
    lse = jnp.where(nonempty, m + jnp.log2(jnp.where(nonempty, l, 1.0)), _NEG)
    if o_ref is not None:
        pltriton.store(o_ref.at[b, h, sp, :], out)
        pltriton.store(lse_ref.at[b, h, sp, :], jnp.full((acc.shape[0],), lse, jnp.float32))
    return out, lse


@functools.partial(jax.jit, static_argnames=("block_k", "num_splits", "num_warps", "num_stages", "interpret"))
def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, *, block_k: int | None = None,
                     num_splits: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                     interpret: bool | None = None) -> jax.Array:
    """softmax(q·Kᵀ/√D)·V over the first ``lengths[b]`` cache slots: q (B, H, D), k/v (B, S, H, D) -> (B, H, D).

    Rows with ``lengths[b] == 0`` give zeros; lengths past S are clipped to S.
    """
    if q.ndim != 3 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"{q.shape=} must be (B, H, D) and {k.shape=}, {v.shape=} equal (B, S, H, D)")
    B, S, H, D = k.shape
    if q.shape != (B, H, D):
        raise ValueError(f"{q.shape=} must be (B, H, D) = {(B, H, D)} to match the cache {k.shape}")
    if D & (D - 1) or D < 16:
        raise ValueError(f"head_dim {D=} must be a power of two >= 16")
    if lengths.shape != (B,):
        raise ValueError(f"{lengths.shape=} must be ({B},)")
    bk, chunk, splits, params = _split_plan(k, block_k, num_splits, num_warps, num_stages)
    kernel = functools.partial(_decode_kernel, bk=bk, chunk=chunk, scale=1.0 / math.sqrt(D))
    part = jax.ShapeDtypeStruct((B, H, splits, D), jnp.float32)
    o, lse = pl.pallas_call(
        kernel,
        out_shape=(part, part),
        grid=(B, H, splits),
        in_specs=[pl.no_block_spec] * 4,
        out_specs=(pl.no_block_spec, pl.no_block_spec),
        compiler_params=params,
        interpret=default_interpret(interpret),
        name="jaxgpt_decode_attention",
    )(q, k, v, jnp.minimum(lengths.astype(jnp.int32), S))
    return _combine(o, lse[..., 0]).astype(q.dtype)


def _append_kernel(p_ref,  # (P, B, 3C) float32 split-K partials of the c_attn projection of the new tokens
                   pb_ref,  # (3C,) c_attn bias
                   kc_ref, vc_ref,  # (B, S, H, D) caches (aliased to kc_out/vc_out)
                   pos_ref,  # (B,) int32: the slot of each row's new token
                   o_ref, lse_ref,  # (B, H, splits, D) float32 each
                   kc_out, vc_out,  # the caches, updated in place at slot pos
                   *, heads: int, bk: int, chunk: int, scale: float, dtype):
    b, h, sp = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    D = kc_ref.shape[-1]
    C = heads * D

    def finished(off):  # (D,) columns [off, off + D) of the projection, finished and rounded like a store
        acc = jnp.zeros((D,), jnp.float32)
        for p in range(p_ref.shape[0]):
            acc += pltriton.load(p_ref.at[jnp.int32(p), b, pl.ds(off, D)])
        return finish(acc, pltriton.load(pb_ref.at[pl.ds(off, D)]), "none", dtype)

    q = finished(h * D).astype(jnp.float32) * (scale * LOG2E)  # (D,)
    k_new, v_new = finished(C + h * D), finished(2 * C + h * D)  # (D,) each, cache dtype
    pos = pos_ref[b]
    first = jnp.broadcast_to(sp == 0, (D,))
    # The new token's key and value go to slot pos (split 0 writes them) and count here straight from registers;
    # the cache loop reads only slots before pos, so no program reads a slot another one writes.
    pltriton.store(kc_out.at[b, pos, h, :], k_new.astype(kc_out.dtype), mask=first)
    pltriton.store(vc_out.at[b, pos, h, :], v_new.astype(vc_out.dtype), mask=first)
    s_new = jnp.sum(q * k_new.astype(jnp.float32))
    # (Triton lowering: a select between two Python literals types them like its i1 predicate, so build every
    # initial value from a traced float32.)
    is_first = (sp == 0).astype(jnp.float32)
    carry = (v_new.astype(jnp.float32) * is_first, jnp.where(sp == 0, s_new, jnp.full_like(s_new, _NEG)), is_first)
    # The cache loop stops before pos: the new token already counts in split 0's carry.
    _attend_split(q, kc_ref, vc_ref, o_ref, lse_ref, carry, b=b, h=h, sp=sp, lo=sp * chunk,
                  hi=jnp.minimum(sp * chunk + chunk, pos), bk=bk)


@functools.partial(jax.jit, static_argnames=("block_k", "num_splits", "num_warps", "num_stages", "interpret"))
def decode_attention_append(qkv: "SplitK | jax.Array", k_cache: jax.Array, v_cache: jax.Array, pos: jax.Array, *,
                            block_k: int | None = None, num_splits: int | None = None,
                            num_warps: int | None = None, num_stages: int | None = None,
                            interpret: bool | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One decode step's attention in one kernel: finish the QKV projection, append K/V, attend.

    qkv: the new tokens' c_attn output, (B, 3, H, D) / (B, 1, 3, H, D), or its ``SplitK`` partials (P, B, 3C) with
    the bias still to add (the kernel adds it). Row ``b``'s key and value are written to cache slot ``pos[b]`` and its
    query attends to slots ``0..pos[b]``. The caches are aliased to the outputs: inside a jitted loop that carries
    (or donates) them, the update is in place; called alone, XLA copies them first.
    Returns ``(out (B, H, D), k_cache, v_cache)``.
    """
    if k_cache.ndim != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"{k_cache.shape=} and {v_cache.shape=} must be equal (B, S, H, D)")
    B, S, H, D = k_cache.shape
    if D & (D - 1) or D < 16:
        raise ValueError(f"head_dim {D=} must be a power of two >= 16")
    if pos.shape != (B,):
        raise ValueError(f"{pos.shape=} must be ({B},)")
    if isinstance(qkv, SplitK):
        parts, bias, dtype = qkv.parts, qkv.bias, qkv.dtype
    else:
        parts = qkv.reshape(1, B, 3 * H * D).astype(jnp.float32)
        bias, dtype = jnp.zeros((3 * H * D,), jnp.float32), qkv.dtype
    if parts.shape[1:] != (B, 3 * H * D):
        raise ValueError(f"qkv partials {parts.shape} must be (P, {B}, {3 * H * D}) for the cache {k_cache.shape}")
    bk, chunk, splits, params = _split_plan(k_cache, block_k, num_splits, num_warps, num_stages)
    kernel = functools.partial(_append_kernel, heads=H, bk=bk, chunk=chunk, scale=1.0 / math.sqrt(D),
                               dtype=jnp.dtype(dtype))
    part = jax.ShapeDtypeStruct((B, H, splits, D), jnp.float32)
    o, lse, k_cache, v_cache = pl.pallas_call(
        kernel,
        out_shape=(part, part, jax.ShapeDtypeStruct(k_cache.shape, k_cache.dtype),
                   jax.ShapeDtypeStruct(v_cache.shape, v_cache.dtype)),
        grid=(B, H, splits),
        in_specs=[pl.no_block_spec] * 5,
        out_specs=[pl.no_block_spec] * 4,
        input_output_aliases={2: 2, 3: 3},
        compiler_params=params,
        interpret=default_interpret(interpret),
        name="jaxgpt_decode_attention_append",
    )(parts, bias, k_cache, v_cache, jnp.clip(pos.astype(jnp.int32), 0, S - 1))
    return _combine(o, lse[..., 0]).astype(dtype), k_cache, v_cache


def decode_attention_append_reference(qkv, k_cache, v_cache, pos):
    """Pure jnp: qkv (B, 3, H, D) appended at slot pos[b], then attention over slots 0..pos[b]."""
    B = k_cache.shape[0]
    qkv = qkv.reshape(B, 3, *k_cache.shape[2:])
    rows = jnp.arange(B)
    k_cache = k_cache.at[rows, pos].set(qkv[:, 1].astype(k_cache.dtype))
    v_cache = v_cache.at[rows, pos].set(qkv[:, 2].astype(v_cache.dtype))
    return decode_attention_reference(qkv[:, 0], k_cache, v_cache, pos + 1), k_cache, v_cache


def _split_plan(cache: jax.Array, block_k, num_splits, num_warps, num_stages):
    """Block size, keys per split, split count and compiler params for a (B, S, H, D) cache (tuned or given)."""
    B, S, H, D = cache.shape
    cfg = lookup(DecodeAttentionConfig, batch=B, heads=H, cache=S, head_dim=D, dtype=cache.dtype)
    bk, splits = block_k or cfg.block_k, num_splits or cfg.num_splits
    check_blocks(block_k=bk)
    if splits < 1:
        raise ValueError(f"num_splits={splits} must be >= 1")
    chunk = pl.cdiv(pl.cdiv(S, splits), bk) * bk  # keys per split, a whole number of blocks
    return bk, chunk, pl.cdiv(S, chunk), compiler_params(num_warps or cfg.num_warps, num_stages or cfg.num_stages)


def _combine(o: jax.Array, lse: jax.Array) -> jax.Array:
    """Merge split outputs: o (B, H, splits, D), lse (B, H, splits) in log2 -> (B, H, D) float32."""
    w = jnp.exp2(lse - jnp.max(lse, axis=-1, keepdims=True))  # (B, H, splits); empty splits weigh 0
    w = jnp.where(lse > _NEG / 2, w, 0.0)
    return jnp.sum(o * w[..., None], axis=2) / jnp.maximum(jnp.sum(w, axis=-1), 1e-30)[..., None]


def decode_attention_reference(q, k, v, lengths):
    """Pure jnp in float32: (B, H, D), (B, S, H, D) x2, (B,) -> (B, H, D); rows with no key give zeros."""
    B, S, H, D = k.shape
    s = jnp.einsum("bhd,bshd->bhs", q.astype(jnp.float32), k.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST) / math.sqrt(D)
    s = jnp.where(jnp.arange(S)[None, None, :] < lengths[:, None, None], s, -jnp.inf)
    p = jnp.nan_to_num(jax.nn.softmax(s, axis=-1))
    o = jnp.einsum("bhs,bshd->bhd", p, v.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return o.astype(q.dtype)
