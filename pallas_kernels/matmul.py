"""Tiled matmul with a fused epilogue: ``act(x @ w + b)`` (Pallas, Triton lowering).

Used for GPT-2's four projections: ``c_attn`` (the fused QKV projection: its ``(B·T, 3C)`` output *is* the
``(B, T, 3, H, D)`` layout the attention kernel reads, a free reshape), ``c_fc`` with the GELU(tanh) epilogue,
and both ``c_proj``. f32 accumulation; bias and activation applied in registers before the one store. M, N and K
need not divide the blocks: loads and stores are masked (Pallas-Triton does not mask overhanging blocks).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import check_blocks, compiler_params, default_interpret, without_x_bias
from pallas_kernels.tuning import MatmulConfig, lookup

from pallas_kernels.partials import ACTIVATIONS, SplitK, finish, gelu_tanh, resolve  # noqa: F401


def _matmul_kernel(x_ref, w_ref, b_ref,  # inputs: (M, K), (K, N), (N,) — whole arrays, indexed here
                   o_ref,  # output: (BM, BN) block
                   *, m: int, n: int, k: int, bm: int, bn: int, bk: int, activation: str, precision):
    i, j = pl.program_id(0), pl.program_id(1)
    rows = i * bm + jnp.arange(bm)
    cols = j * bn + jnp.arange(bn)

    def body(kk, acc):
        ks = kk * bk + jnp.arange(bk)
        xm = (rows[:, None] < m) & (ks[None, :] < k)
        wm = (ks[:, None] < k) & (cols[None, :] < n)
        xt = pltriton.load(x_ref.at[pl.ds(i * bm, bm), pl.ds(kk * bk, bk)], mask=xm, other=0.0)  # (BM, BK)
        wt = pltriton.load(w_ref.at[pl.ds(kk * bk, bk), pl.ds(j * bn, bn)], mask=wm, other=0.0)  # (BK, BN)
        return acc + jnp.dot(xt, wt, preferred_element_type=jnp.float32, precision=precision)

    acc = jax.lax.fori_loop(0, pl.cdiv(k, bk), body, jnp.zeros((bm, bn), jnp.float32))  # (BM, BN)
    bias = pltriton.load(b_ref.at[pl.ds(j * bn, bn)], mask=cols < n, other=0.0).astype(jnp.float32)
    acc = acc + bias[None, :]
    if activation == "gelu_tanh":
        acc = gelu_tanh(acc)
    pltriton.store(o_ref, acc.astype(o_ref.dtype), mask=(rows[:, None] < m) & (cols[None, :] < n))


def _splitk_kernel(x_ref,  # (M, K) activations, or (S', M, K) float32 partials of the previous matmul
                   xb_ref,  # (K,) the previous matmul's bias when x_ref holds partials, else None
                   w_ref,  # (K, N)
                   o_ref,  # (S, M, N) float32 partial products
                   *, m: int, n: int, k: int, bm: int, bn: int, bk: int, chunk: int, x_act: str, precision):
    j, s = pl.program_id(0), pl.program_id(1)
    rows = jnp.arange(bm)
    cols = j * bn + jnp.arange(bn)
    lo = s * chunk

    def body(kk, acc):
        ks = lo + kk * bk + jnp.arange(bk)
        xm = (rows[:, None] < m) & (ks[None, :] < k)
        wt = pltriton.load(w_ref.at[pl.ds(lo + kk * bk, bk), pl.ds(j * bn, bn)],
                           mask=(ks[:, None] < k) & (cols[None, :] < n), other=0.0)  # (BK, BN)
        if xb_ref is None:
            xt = pltriton.load(x_ref.at[pl.ds(0, bm), pl.ds(lo + kk * bk, bk)], mask=xm, other=0.0)  # (BM, BK)
        else:  # finish the previous matmul on the fly: sum its partials, bias, activation, round
            xs = jnp.zeros((bm, bk), jnp.float32)
            for p in range(x_ref.shape[0]):
                xs += pltriton.load(x_ref.at[jnp.int32(p), pl.ds(0, bm), pl.ds(lo + kk * bk, bk)], mask=xm, other=0.0)
            xb = pltriton.load(xb_ref.at[pl.ds(lo + kk * bk, bk)], mask=ks < k, other=0.0)
            xt = jnp.where(xm, finish(xs, xb[None, :], x_act, w_ref.dtype), 0.0).astype(w_ref.dtype)
        return acc + jnp.dot(xt, wt, preferred_element_type=jnp.float32, precision=precision)

    n_k = pl.cdiv(jnp.minimum(chunk, k - lo), bk)
    acc = jax.lax.fori_loop(0, n_k, body, jnp.zeros((bm, bn), jnp.float32))  # (BM, BN)
    pltriton.store(o_ref.at[s, pl.ds(0, bm), pl.ds(j * bn, bn)], acc,
                   mask=(rows[:, None] < m) & (cols[None, :] < n))


@functools.partial(jax.jit, static_argnames=("activation", "block_n", "block_k", "split_k", "num_warps",
                                             "num_stages", "interpret"))
def matmul_split_k(x: "jax.Array | SplitK", w: jax.Array, b: jax.Array, *, activation: str = "none",
                   block_n: int | None = None, block_k: int | None = None, split_k: int | None = None,
                   num_warps: int | None = None, num_stages: int | None = None,
                   interpret: bool | None = None) -> SplitK:
    """Decode-sized ``act(x @ w + b)`` left unfinished: programs over (N blocks, K chunks) write float32 partials.

    x: (M, K) with M <= 16, or the ``SplitK`` of the previous matmul (finished on load, so its epilogue costs no
    kernel). Returns ``SplitK`` (S, M, N); ``resolve`` it, or hand it to a kernel that takes partials.
    """
    xs = x.parts if isinstance(x, SplitK) else x
    M, K = xs.shape[-2:]
    if w.ndim != 2 or K != w.shape[0] or b.shape != (w.shape[1],):
        raise ValueError(f"shapes do not fit x @ w + b: x (M, K) = {(M, K)}, {w.shape=}, {b.shape=}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{activation=} must be one of {ACTIVATIONS}")
    if M > 16:
        raise ValueError(f"split-K matmul is for decode-sized M <= 16, got {M=}")
    N = w.shape[1]
    cfg = lookup(MatmulConfig, m=M, n=N, k=K, dtype=w.dtype)
    bn, bk = block_n or cfg.block_n, block_k or cfg.block_k
    split = split_k or max(cfg.split_k, 1)
    check_blocks(block_n=bn, block_k=bk)
    if split < 1:
        raise ValueError(f"split_k={split} must be >= 1")
    chunk = pl.cdiv(pl.cdiv(K, split), bk) * bk
    split = pl.cdiv(K, chunk)
    precision = jax.lax.Precision.HIGHEST if w.dtype == jnp.float32 else None
    kernel = functools.partial(_splitk_kernel, m=M, n=N, k=K, bm=16, bn=bn, bk=bk, chunk=chunk,
                               x_act=x.activation if isinstance(x, SplitK) else "none", precision=precision)
    args = (xs, x.bias, w) if isinstance(x, SplitK) else (xs, w)
    if not isinstance(x, SplitK):
        kernel = without_x_bias(kernel)
    part = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((split, M, N), jnp.float32),
        grid=(pl.cdiv(N, bn), split),
        in_specs=[pl.no_block_spec] * len(args),
        out_specs=pl.no_block_spec,
        compiler_params=compiler_params(num_warps or cfg.num_warps, num_stages or cfg.num_stages),
        interpret=default_interpret(interpret),
        name="jaxgpt_matmul_split_k",
    )(*args)
    return SplitK(part, b, activation, jnp.dtype(x.dtype if isinstance(x, SplitK) else xs.dtype))


@functools.partial(jax.jit, static_argnames=("activation", "block_m", "block_n", "block_k", "num_warps",
                                             "num_stages", "split_k", "interpret"))
def matmul(x: jax.Array, w: jax.Array, b: jax.Array, *, activation: str = "none", block_m: int | None = None,
           block_n: int | None = None, block_k: int | None = None, num_warps: int | None = None,
           num_stages: int | None = None, split_k: int | None = None, interpret: bool | None = None) -> jax.Array:
    """``act(x @ w + b)``: x (..., K), w (K, N), b (N,) -> (..., N) in x's dtype.

    ``split_k`` > 1 (the tuned choice for decode-sized M <= block_m) also splits K over programs; their float32
    partials are summed, biased and activated by one fused XLA epilogue.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"{activation=} must be one of {ACTIVATIONS}")
    if w.ndim != 2 or x.shape[-1] != w.shape[0] or b.shape != (w.shape[1],):
        raise ValueError(f"shapes do not fit x @ w + b: {x.shape=}, {w.shape=}, {b.shape=}")
    lead, K, N = x.shape[:-1], w.shape[0], w.shape[1]
    x2 = x.reshape(-1, K)  # (M, K)
    M = x2.shape[0]
    cfg = lookup(MatmulConfig, m=M, n=N, k=K, dtype=x.dtype)
    bm, bn, bk = block_m or cfg.block_m, block_n or cfg.block_n, block_k or cfg.block_k
    check_blocks(block_m=bm, block_n=bn, block_k=bk)
    precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    split = split_k or cfg.split_k
    if split < 1:
        raise ValueError(f"split_k={split} must be >= 1")
    if split > 1:
        if M > bm:
            raise ValueError(f"split_k={split} needs M={M} <= block_m={bm}")
        return resolve(matmul_split_k(x2, w, b, activation=activation, block_n=bn, block_k=bk, split_k=split,
                                      num_warps=num_warps, num_stages=num_stages,
                                      interpret=interpret)).reshape(*lead, N)
    kernel = functools.partial(_matmul_kernel, m=M, n=N, k=K, bm=bm, bn=bn, bk=bk, activation=activation,
                               precision=precision)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((M, N), x.dtype),
        grid=(pl.cdiv(M, bm), pl.cdiv(N, bn)),
        in_specs=[pl.no_block_spec] * 3,
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=compiler_params(num_warps or cfg.num_warps, num_stages or cfg.num_stages),
        interpret=default_interpret(interpret),
        name=f"jaxgpt_matmul_{activation}",
    )(x2, w, b)
    return out.reshape(*lead, N)


def matmul_reference(x, w, b, *, activation: str = "none"):
    y = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST) + b
    if activation == "gelu_tanh":
        y = gelu_tanh(y)
    return y.astype(x.dtype)
