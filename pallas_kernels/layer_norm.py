"""Fused residual add + LayerNorm (Pallas, Triton lowering).

``h = x + residual; y = LayerNorm(h) * w + b``, returning ``(h, y)`` in one pass over the rows: the residual stream
needs ``h``, the next sublayer needs ``y``. Statistics in float32. Any row count and any width: the block's minor
dimension is the next power of two of C (Triton needs power-of-two blocks) and every load and store is masked,
because Pallas-Triton does not mask a block that overhangs the array (interpret mode would hide that).
``residual=None`` gives a plain LayerNorm (``h`` is ``x``).

Tested: CPU interpret mode (CI) and the H100 (jax 0.11.2), C = 768, 1024, 1280, 1600 and odd widths.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import compiler_params, default_interpret, next_pow2
from pallas_kernels.partials import SplitK, finish
from pallas_kernels.tuning import LayerNormConfig, lookup


def _add_layer_norm_kernel(x_ref, r_ref, w_ref, b_ref,  # inputs: (BR, Cp), (BR, Cp) or None, (Cp,), (Cp,)
                           h_ref, y_ref,  # outputs: (BR, Cp) each; h_ref None without a residual
                           *, n_rows: int, n_cols: int, eps: float, block_rows: int, block_cols: int):
    row0 = pl.program_id(0) * block_rows
    rows = row0 + jax.lax.broadcasted_iota(jnp.int32, (block_rows, block_cols), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (block_rows, block_cols), 1)
    mask = (rows < n_rows) & (cols < n_cols)
    x = pltriton.load(x_ref, mask=mask, other=0.0).astype(jnp.float32)
    if r_ref is not None:
        x = x + pltriton.load(r_ref, mask=mask, other=0.0).astype(jnp.float32)
        pltriton.store(h_ref, x.astype(h_ref.dtype), mask=mask)
    mean = jnp.sum(x, axis=1) / n_cols  # (BR,)
    xc = jnp.where(mask, x - mean[:, None], 0.0)
    var = jnp.sum(xc * xc, axis=1) / n_cols
    rstd = jax.lax.rsqrt(var + eps)
    cmask = jax.lax.broadcasted_iota(jnp.int32, (block_cols,), 0) < n_cols
    w = pltriton.load(w_ref, mask=cmask, other=0.0).astype(jnp.float32)
    b = pltriton.load(b_ref, mask=cmask, other=0.0).astype(jnp.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    pltriton.store(y_ref, y.astype(y_ref.dtype), mask=mask)


def _partials_add_ln_kernel(p_ref,  # (S, N, C) float32 split-K partials of the sublayer's last matmul
                            pb_ref,  # (C,) that matmul's bias
                            r_ref, w_ref, b_ref,  # (N, C), (C,), (C,)
                            h_ref, y_ref,  # (N, C) each
                            *, n_rows: int, n_cols: int, eps: float, block_rows: int, block_cols: int, dtype):
    """The decode-step twin of ``_add_layer_norm_kernel``: x is finished here from the partials."""
    row0 = pl.program_id(0) * block_rows
    rows = row0 + jax.lax.broadcasted_iota(jnp.int32, (block_rows, block_cols), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (block_rows, block_cols), 1)
    mask = (rows < n_rows) & (cols < n_cols)
    cmask = jax.lax.broadcasted_iota(jnp.int32, (block_cols,), 0) < n_cols
    acc = jnp.zeros((block_rows, block_cols), jnp.float32)
    for p in range(p_ref.shape[0]):
        acc += pltriton.load(p_ref.at[jnp.int32(p), pl.ds(row0, block_rows), pl.ds(0, block_cols)], mask=mask,
                             other=0.0)
    pb = pltriton.load(pb_ref.at[pl.ds(0, block_cols)], mask=cmask, other=0.0)
    x = finish(acc, pb[None, :], "none", dtype).astype(jnp.float32)  # the sublayer output, rounded like a store
    x = x + pltriton.load(r_ref.at[pl.ds(row0, block_rows), pl.ds(0, block_cols)], mask=mask,
                          other=0.0).astype(jnp.float32)
    pltriton.store(h_ref.at[pl.ds(row0, block_rows), pl.ds(0, block_cols)], x.astype(h_ref.dtype), mask=mask)
    mean = jnp.sum(jnp.where(mask, x, 0.0), axis=1) / n_cols  # (BR,)
    xc = jnp.where(mask, x - mean[:, None], 0.0)
    var = jnp.sum(xc * xc, axis=1) / n_cols
    rstd = jax.lax.rsqrt(var + eps)
    w = pltriton.load(w_ref.at[pl.ds(0, block_cols)], mask=cmask, other=0.0).astype(jnp.float32)
    b = pltriton.load(b_ref.at[pl.ds(0, block_cols)], mask=cmask, other=0.0).astype(jnp.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    pltriton.store(y_ref.at[pl.ds(row0, block_rows), pl.ds(0, block_cols)], y.astype(y_ref.dtype), mask=mask)


def _partials_add_layer_norm(x: SplitK, residual, w, b, *, eps, block_rows, num_warps, interpret):
    S, N, C = x.parts.shape
    if residual is None or residual.shape[-1] != C or residual.size != N * C:
        raise ValueError(f"partials (S, N, C) = {x.parts.shape} need a residual of N*C elements, got "
                         f"{None if residual is None else residual.shape}")
    cfg = lookup(LayerNormConfig, rows=N, cols=C, dtype=residual.dtype)
    br = block_rows or cfg.block_rows
    kernel = functools.partial(_partials_add_ln_kernel, n_rows=N, n_cols=C, eps=eps, block_rows=br,
                               block_cols=next_pow2(C), dtype=x.dtype)
    h, y = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((N, C), residual.dtype)] * 2,
        grid=(pl.cdiv(N, br),),
        in_specs=[pl.no_block_spec] * 5,
        out_specs=[pl.no_block_spec] * 2,
        compiler_params=compiler_params(num_warps or cfg.num_warps, 1),
        interpret=default_interpret(interpret),
        name="jaxgpt_partials_add_layer_norm",
    )(x.parts, x.bias, residual.reshape(N, C), w, b)
    return h.reshape(residual.shape), y.reshape(residual.shape)


@functools.partial(jax.jit, static_argnames=("eps", "block_rows", "num_warps", "interpret"))
def add_layer_norm(x: jax.Array, residual: jax.Array | None, w: jax.Array, b: jax.Array, *, eps: float = 1e-5,
                   block_rows: int | None = None, num_warps: int | None = None,
                   interpret: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """``(h, LN(h))`` with ``h = x + residual`` over the last axis; x/residual (..., C), w/b (C,).

    ``x`` may be a ``SplitK`` (a decode-sized matmul's unfinished partials): its epilogue runs in this kernel.
    """
    if isinstance(x, SplitK):
        return _partials_add_layer_norm(x, residual, w, b, eps=eps, block_rows=block_rows, num_warps=num_warps,
                                        interpret=interpret)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"{residual.shape=} must equal {x.shape=}")
    if x.ndim < 1 or w.shape != (x.shape[-1],) or b.shape != (x.shape[-1],):
        raise ValueError(f"{w.shape=} and {b.shape=} must be ({x.shape[-1]},) for {x.shape=}")
    shape, C = x.shape, x.shape[-1]
    x2 = x.reshape(-1, C)  # (N, C)
    N = x2.shape[0]
    cfg = lookup(LayerNormConfig, rows=N, cols=C, dtype=x.dtype)
    block_rows = block_rows or cfg.block_rows
    num_warps = num_warps or cfg.num_warps
    if block_rows & (block_rows - 1):
        raise ValueError(f"{block_rows=} must be a power of two")
    Cp = next_pow2(C)
    row_spec = pl.BlockSpec((block_rows, Cp), lambda i: (i, 0))
    vec_spec = pl.BlockSpec((Cp,), lambda i: (0,))
    has_res = residual is not None
    out_shape = [jax.ShapeDtypeStruct((N, C), x.dtype)] * (2 if has_res else 1)
    kernel = functools.partial(_add_layer_norm_kernel, n_rows=N, n_cols=C, eps=eps, block_rows=block_rows,
                               block_cols=Cp)
    if not has_res:
        kernel = _without_residual(kernel)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(pl.cdiv(N, block_rows),),
        in_specs=[row_spec] + ([row_spec] if has_res else []) + [vec_spec, vec_spec],
        out_specs=[row_spec] * len(out_shape),
        compiler_params=compiler_params(num_warps, 1),
        interpret=default_interpret(interpret),
        name="jaxgpt_add_layer_norm" if has_res else "jaxgpt_layer_norm",
    )(x2, *([residual.reshape(-1, C)] if has_res else []), w, b)
    if has_res:
        h, y = outs
        return h.reshape(shape), y.reshape(shape)
    return x, outs[0].reshape(shape)


def _without_residual(kernel):
    def k(x_ref, w_ref, b_ref, y_ref):
        kernel(x_ref, None, w_ref, b_ref, None, y_ref)
    return k


def add_layer_norm_reference(x, residual, w, b, *, eps: float = 1e-5):
    """Pure jnp: float32 statistics, output in x's dtype."""
    h = x if residual is None else x + residual
    hf = h.astype(jnp.float32)
    mean = hf.mean(-1, keepdims=True)
    var = jnp.square(hf - mean).mean(-1, keepdims=True)
    y = (hf - mean) * jax.lax.rsqrt(var + eps) * w.astype(jnp.float32) + b.astype(jnp.float32)
    return h, y.astype(x.dtype)
