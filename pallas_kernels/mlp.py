"""GPT-2 MLP: ``c_proj(GELU_tanh(c_fc(x)))`` in two variants (Pallas, Triton lowering).

* ``two_pass``: the tiled matmul with bias+GELU fused into ``c_fc``'s epilogue, then ``c_proj`` with its bias.
  The 4C intermediate makes one round trip through HBM; each matmul gets full-size tiles.
* ``fused``: one kernel per block of rows that walks the 4C dimension in chunks, computing
  ``GELU(x @ W_fc[:, chunk] + b)`` in registers and accumulating ``chunk @ W_proj[chunk, :]`` straight into the
  ``(rows, C)`` output: the intermediate never touches HBM. It wins where rows are few (decode, short prompts)
  and loses where the row block must be large to feed the tensor cores, since the whole padded C row
  (1024 for gpt2, 2048 for gpt2-xl) stays in the accumulator.
``mlp`` picks the variant per shape from the tuning table (``MlpConfig``); measure with the autotuner.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import compiler_params, default_interpret, next_pow2
from pallas_kernels.matmul import gelu_tanh, matmul
from pallas_kernels.tuning import MlpConfig, gpu_name, load_table, lookup, shape_key

VARIANTS = ("fused", "two_pass")


def _fused_mlp_kernel(x_ref, wfc_ref, bfc_ref, wproj_ref, bproj_ref,  # (M, C), (C, 4C), (4C,), (4C, C), (C,)
                      o_ref,  # (BM, Cp) block
                      *, m: int, c: int, bm: int, bh: int, cp: int, precision):
    i = pl.program_id(0)
    rows = i * bm + jnp.arange(bm)
    cols = jnp.arange(cp)
    xmask = (rows[:, None] < m) & (cols[None, :] < c)
    x = pltriton.load(x_ref.at[pl.ds(i * bm, bm), pl.ds(0, cp)], mask=xmask, other=0.0)  # (BM, Cp)

    def body(t, acc):
        w1 = pltriton.load(wfc_ref.at[pl.ds(0, cp), pl.ds(t * bh, bh)], mask=(cols[:, None] < c), other=0.0)
        b1 = pltriton.load(bfc_ref.at[pl.ds(t * bh, bh)]).astype(jnp.float32)  # 4C divides by bh
        hidden = gelu_tanh(jnp.dot(x, w1, preferred_element_type=jnp.float32, precision=precision) + b1[None])
        w2 = pltriton.load(wproj_ref.at[pl.ds(t * bh, bh), pl.ds(0, cp)], mask=(cols[None, :] < c), other=0.0)
        return acc + jnp.dot(hidden.astype(x.dtype), w2, preferred_element_type=jnp.float32, precision=precision)

    acc = jax.lax.fori_loop(0, (4 * c) // bh, body, jnp.zeros((bm, cp), jnp.float32))  # (BM, Cp)
    b2 = pltriton.load(bproj_ref.at[pl.ds(0, cp)], mask=cols < c, other=0.0).astype(jnp.float32)
    pltriton.store(o_ref, (acc + b2[None]).astype(o_ref.dtype), mask=xmask)


@functools.partial(jax.jit, static_argnames=("block_m", "block_h", "num_warps", "num_stages", "interpret"))
def fused_mlp(x, w_fc, b_fc, w_proj, b_proj, *, block_m: int | None = None, block_h: int | None = None,
              num_warps: int | None = None, num_stages: int | None = None, interpret: bool | None = None):
    """The ``fused`` variant: x (..., C) -> (..., C), the 4C intermediate kept on chip."""
    C = x.shape[-1]
    if w_fc.shape != (C, 4 * C) or b_fc.shape != (4 * C,) or w_proj.shape != (4 * C, C) or b_proj.shape != (C,):
        raise ValueError(f"MLP weights {w_fc.shape=}, {w_proj.shape=} do not fit {x.shape=}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, C)
    M = x2.shape[0]
    cfg = lookup(MlpConfig, m=M, c=C, dtype=x.dtype)
    bm, bh = block_m or cfg.block_m, block_h or cfg.block_h
    while block_h is None and bh > 16 and (4 * C) % bh:
        bh //= 2
    if (4 * C) % bh or bh & (bh - 1) or bm & (bm - 1) or bm < 16:
        raise ValueError(f"{block_h=} must be a power of two dividing 4C={4 * C}; {block_m=} a power of two >= 16")
    cp = next_pow2(C)
    if not fused_fits(C, x.dtype, bm, bh):
        raise ValueError(f"fused MLP at C={C} with {block_m=}, {block_h=} needs {_smem_bytes(C, x.dtype, bm, bh)} "
                         f"bytes of shared memory, over {SMEM_BUDGET}: use variant='two_pass' or smaller blocks")
    precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    kernel = functools.partial(_fused_mlp_kernel, m=M, c=C, bm=bm, bh=bh, cp=cp, precision=precision)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((M, C), x.dtype),
        grid=(pl.cdiv(M, bm),),
        in_specs=[pl.no_block_spec] * 5,
        out_specs=pl.BlockSpec((bm, cp), lambda i: (i, 0)),
        compiler_params=compiler_params(num_warps or cfg.num_warps, num_stages or cfg.num_stages),
        interpret=default_interpret(interpret),
        name="jaxgpt_fused_mlp",
    )(x2, w_fc, b_fc, w_proj, b_proj)
    return out.reshape(*lead, C)


SMEM_BUDGET = 200 * 1024  # H100: 227 KB a block; leave room for Triton's own scratch


def _smem_bytes(c: int, dtype, bm: int, bh: int) -> int:
    cp = next_pow2(c)
    return (bm * cp + 2 * cp * bh) * jnp.dtype(dtype).itemsize  # x block + one W_fc and one W_proj chunk


def fused_fits(c: int, dtype, bm: int | None = None, bh: int | None = None) -> bool:
    """Whether the fused variant's tiles fit shared memory (bm/bh None: the tuned or heuristic config)."""
    if (4 * c) % 16:
        return False
    if bm is None or bh is None:
        cfg = lookup(MlpConfig, m=1, c=c, dtype=dtype)
        bm, bh = bm or cfg.block_m, bh or cfg.block_h
    return _smem_bytes(c, dtype, bm, bh) <= SMEM_BUDGET


def mlp(x, w_fc, b_fc, w_proj, b_proj, *, variant: str | None = None, interpret: bool | None = None):
    """GPT-2 MLP with the variant the tuning table picks for this shape (or the one named)."""
    M = x.size // x.shape[-1]
    variant = variant or mlp_variant(M, x.shape[-1], x.dtype)
    if variant not in VARIANTS:
        raise ValueError(f"{variant=} must be one of {VARIANTS}")
    if variant == "fused":
        return fused_mlp(x, w_fc, b_fc, w_proj, b_proj, interpret=interpret)
    return matmul(matmul(x, w_fc, b_fc, activation="gelu_tanh", interpret=interpret), w_proj, b_proj,
                  interpret=interpret)


def mlp_variant(m: int, c: int, dtype) -> str:
    entry = load_table(gpu_name()).get("mlp_variant", {}).get(shape_key(m=m, c=c, dtype=dtype))
    if entry:
        return entry
    # Measured on the H100: two-pass won at every M tried (prefill M=8192: 181 vs 1245 us at C=768; decode M=1:
    # the fused kernel's grid is M/16 programs, one SM streaming all of W_fc and W_proj). Fused only where a
    # tuning table says so.
    return "two_pass"


def mlp_reference(x, w_fc, b_fc, w_proj, b_proj):
    f32 = jnp.float32
    hi = jax.lax.Precision.HIGHEST
    h = gelu_tanh(jnp.dot(x.astype(f32), w_fc.astype(f32), precision=hi) + b_fc.astype(f32))
    return (jnp.dot(h, w_proj.astype(f32), precision=hi) + b_proj.astype(f32)).astype(x.dtype)
