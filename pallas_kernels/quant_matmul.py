"""Weight-only quantized matmul: ``act(x @ dequant(w) + b)`` reading int8 or packed int4 weights (Pallas, Triton).

The weights stay quantized in HBM; each tile is loaded as int8 (or unpacked from int4 bytes) and converted to the
activation dtype in registers before the MMA; the scales multiply the float32 dot products, never the weights, so
no dequantized copy of a weight exists anywhere. Decode-sized M (≤ 16) splits K over programs as the float matmul
does (``matmul_split_k``), the float32 partials summed by one XLA epilogue; larger M runs one program per output
tile with the bias and activation in registers.

Formats: ``pallas_kernels.quant_format`` (int8 per output channel; int4 group-wise, two values a byte).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import check_blocks, compiler_params, default_interpret
from pallas_kernels.partials import ACTIVATIONS, gelu_tanh
from pallas_kernels.quant_format import QWeight, check_format, dequantize
from pallas_kernels.tuning import QuantMatmulConfig, lookup

DECODE_ROWS = 16  # M at or under this splits K over programs


def _validate(x_shape, w: QWeight, b_shape) -> None:
    check_format(w.bits, w.group)
    K, N = w.shape
    if x_shape[-1] != K or b_shape != (N,):
        raise ValueError(f"shapes do not fit x @ w + b: x {tuple(x_shape)}, w (K, N) = {(K, N)}, b {tuple(b_shape)}")
    if w.bits == 8:
        want_q, want_s, q_dtype = (K, N), (1, N), jnp.int8
    else:
        kp = -(-K // w.group) * w.group
        want_q, want_s, q_dtype = (kp // 2, N), (kp // w.group, N), jnp.uint8
    if tuple(w.q.shape) != want_q or w.q.dtype != q_dtype:
        raise ValueError(f"int{w.bits} q must be {want_q} {jnp.dtype(q_dtype).name}, got {w.q.shape} {w.q.dtype}")
    if tuple(w.scale.shape) != want_s:
        raise ValueError(f"int{w.bits} scale must be {want_s}, got {w.scale.shape}")


def _kernel(x_ref,  # (M, K) activations
            q_ref,  # int8 (K, N) or uint8 (Kp/2, N)
            s_ref,  # (1, N) or (Kp/G, N) float32 scales
            b_ref,  # (N,) bias
            o_ref,  # (S, M, N) float32 partials when ``split``, else the (M, N) output
            *, m: int, n: int, k: int, kq: int, bm: int, bn: int, bk: int, chunk: int, bits: int, activation: str,
            split: bool, cdt, precision):
    i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows = i * bm + jnp.arange(bm)
    cols = j * bn + jnp.arange(bn)
    rm, cm = rows < m, cols < n
    lo = s * chunk  # first K row of this program's chunk (a multiple of bk)

    def load_x(k0, width):  # (BM, width) in the compute dtype
        ks = k0 + jnp.arange(width)
        xm = rm[:, None] & (ks[None, :] < k)
        return pltriton.load(x_ref.at[pl.ds(i * bm, bm), pl.ds(k0, width)], mask=xm, other=0.0)

    if bits == 8:
        def body(kk, acc):
            k0 = lo + kk * bk
            ks = k0 + jnp.arange(bk)
            qt = pltriton.load(q_ref.at[pl.ds(k0, bk), pl.ds(j * bn, bn)], mask=(ks[:, None] < k) & cm[None, :],
                               other=0)  # (BK, BN) int8
            return acc + jnp.dot(load_x(k0, bk), qt.astype(cdt), preferred_element_type=jnp.float32,
                                 precision=precision)

        acc = jax.lax.fori_loop(0, pl.cdiv(jnp.minimum(chunk, k - lo), bk), body, jnp.zeros((bm, bn), jnp.float32))
        acc = acc * pltriton.load(s_ref.at[jnp.int32(0), pl.ds(j * bn, bn)], mask=cm, other=0.0)[None, :]
    else:  # int4: one group per step (bk == group), two half-group dots
        h = bk // 2

        def body(kk, acc):
            k0 = lo + kk * bk
            p = pltriton.load(q_ref.at[pl.ds(k0 // 2, h), pl.ds(j * bn, bn)], mask=cm[None, :],
                              other=0).astype(jnp.int32)  # (BK/2, BN): two rows a byte
            w_lo = ((p & 15) - 8).astype(cdt)  # rows k0 .. k0 + h
            w_hi = ((p >> 4) - 8).astype(cdt)  # rows k0 + h .. k0 + bk
            d = jnp.dot(load_x(k0, h), w_lo, preferred_element_type=jnp.float32, precision=precision)
            d += jnp.dot(load_x(k0 + h, h), w_hi, preferred_element_type=jnp.float32, precision=precision)
            sc = pltriton.load(s_ref.at[k0 // bk, pl.ds(j * bn, bn)], mask=cm, other=0.0)  # (BN,) this group
            return acc + d * sc[None, :]

        acc = jax.lax.fori_loop(0, pl.cdiv(jnp.minimum(chunk, kq - lo), bk), body, jnp.zeros((bm, bn), jnp.float32))
    out_mask = rm[:, None] & cm[None, :]
    if split:
        pltriton.store(o_ref.at[s, pl.ds(i * bm, bm), pl.ds(j * bn, bn)], acc, mask=out_mask)
        return
    acc = acc + pltriton.load(b_ref.at[pl.ds(j * bn, bn)], mask=cm, other=0.0).astype(jnp.float32)[None, :]
    if activation == "gelu_tanh":
        acc = gelu_tanh(acc)
    pltriton.store(o_ref.at[pl.ds(i * bm, bm), pl.ds(j * bn, bn)], acc.astype(o_ref.dtype), mask=out_mask)


def _plan(M: int, N: int, K: int, bits: int, group: int | None, dtype, block_m, block_n, block_k, split_k,
          num_warps, num_stages):
    """Block sizes, K split and launch shape: the tuned table's (``tuning.QuantMatmulConfig``) or its heuristic;
    explicit arguments override them."""
    cfg = lookup(QuantMatmulConfig, m=M, n=N, k=K, bits=bits, dtype=dtype)
    decode = M <= DECODE_ROWS
    bm = block_m or cfg.block_m
    bn = block_n or cfg.block_n
    bk = group if bits == 4 else (block_k or cfg.block_k)
    if bits == 4 and block_k not in (None, group):
        raise ValueError(f"int4 block_k must equal the group size {group}, got {block_k}")
    check_blocks(block_m=bm, block_n=bn, block_k=bk)
    kq = K if bits == 8 else -(-K // group) * group
    steps = pl.cdiv(kq, bk)
    split = split_k or (min(cfg.split_k, steps) if decode else 1)
    if split < 1:
        raise ValueError(f"split_k={split} must be >= 1")
    chunk = pl.cdiv(steps, split) * bk
    return bm, bn, bk, kq, chunk, pl.cdiv(kq, chunk), num_warps or cfg.num_warps, num_stages or cfg.num_stages


@functools.partial(jax.jit, static_argnames=("activation", "out_dtype", "block_m", "block_n", "block_k", "split_k",
                                             "num_warps", "num_stages", "interpret"))
def quant_matmul(x: jax.Array, w: QWeight, b: jax.Array, *, activation: str = "none", out_dtype=None,
                 block_m: int | None = None, block_n: int | None = None, block_k: int | None = None,
                 split_k: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                 interpret: bool | None = None) -> jax.Array:
    """``act(x @ dequant(w) + b)``: x (..., K) bf16/f16/f32, w a ``QWeight`` (K, N), b (N,) -> (..., N) in
    ``out_dtype`` (default x's dtype; the LM head asks for float32 logits).

    The int8/int4 tiles are converted in registers; scales multiply the float32 products. Accumulation in float32.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"{activation=} must be one of {ACTIVATIONS}")
    _validate(x.shape, w, b.shape)
    lead, (K, N) = x.shape[:-1], w.shape
    x2 = x.reshape(-1, K)  # (M, K)
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    out, split = _call(x2, w, b, activation, block_m, block_n, block_k, split_k, num_warps, num_stages, interpret,
                       out_dtype=out_dtype)
    if split:  # one fused XLA epilogue: sum the partials, bias, activation, round
        out = out.sum(0) + b.astype(jnp.float32)
        out = (gelu_tanh(out) if activation == "gelu_tanh" else out).astype(out_dtype)
    return out.reshape(*lead, N)


def _call(x2, w: QWeight, b, activation, block_m, block_n, block_k, split_k, num_warps, num_stages, interpret,
          out_dtype):
    """The pallas_call: (out, split?): the (M, N) output, or (S, M, N) float32 partials when K is split."""
    M, (K, N) = x2.shape[0], w.shape
    cdt = x2.dtype
    bm, bn, bk, kq, chunk, split, warps, stages = _plan(M, N, K, w.bits, w.group, cdt, block_m, block_n, block_k,
                                                        split_k, num_warps, num_stages)
    partials = split > 1
    precision = jax.lax.Precision.HIGHEST if jnp.dtype(cdt) == jnp.float32 else None
    kernel = functools.partial(_kernel, m=M, n=N, k=K, kq=kq, bm=bm, bn=bn, bk=bk, chunk=chunk, bits=w.bits,
                               activation=activation, split=partials, cdt=jnp.dtype(cdt), precision=precision)
    args = (x2, w.q, w.scale, b)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((split, M, N) if partials else (M, N),
                                       jnp.float32 if partials else out_dtype),
        grid=(pl.cdiv(M, bm), pl.cdiv(N, bn), split),
        in_specs=[pl.no_block_spec] * len(args),
        out_specs=pl.no_block_spec,
        compiler_params=compiler_params(warps, stages),
        interpret=default_interpret(interpret),
        name=f"jaxgpt_quant_matmul_int{w.bits}",
    )(*args)
    return out, partials


def quant_matmul_reference(x, w: QWeight, b, *, activation: str = "none", out_dtype=None):
    """Dequantize, then the float32 matmul: what ``quant_matmul`` must equal up to accumulation order."""
    y = jnp.dot(x.astype(jnp.float32), dequantize(w), precision=jax.lax.Precision.HIGHEST) + b.astype(jnp.float32)
    if activation == "gelu_tanh":
        y = gelu_tanh(y)
    return y.astype(out_dtype or x.dtype)
