"""The decode step's last kernel: final residual + LayerNorm (``ln_f``) fused into the tied LM head (Pallas, Triton).

After the last block's kernel a decode step used to run two kernels: ``ln_f`` (the residual plus the block's MLP
partials, normalised; ``add_layer_norm`` with ``SplitK``) and the LM head, ``h @ wte.T`` in float32 (cuBLAS through
XLA). At B = 1 the first is ~7 µs of latency for 3 KB of output and the second reads wte (V, C) once, 161 MB for
gpt2-xl (60 µs on the H100, 2.67 TB/s). Here one kernel does both: ``programs`` persistent programs each finish and
normalise the rows themselves (a few KB of partials from L2) into their own scratch row, then stream their share
of wte's rows, (block_n vocab rows × block_k) tiles, into float32 logits. wte is read in its stored (V, C) layout:
each tile row is ``block_k`` contiguous values, and the product is ``x · tileᵀ`` (no transposed copy of the head).

The int8 head (``jaxgpt quantize --lm-head``, held as a ``QHead``: (V, C) int8, wte's layout, and a float32 scale a
row) streams the same (block_n × block_k) tiles at a byte an entry, widened to the compute dtype in registers, the
scales applied to each item's float32 products: half wte's bytes, and no separate residual+LayerNorm kernel.

Rounding follows the two-kernel path: the block's MLP output rounded to the compute dtype as its store would be,
the residual sum and the LayerNorm statistics (two passes, centred) in float32, the normalised rows rounded to
the compute dtype, the product accumulated in float32. ``lm_head_decode_reference`` is the pure-jnp twin.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import check_blocks, compiler_params, default_interpret, next_pow2
from pallas_kernels.partials import SplitK, finish
from pallas_kernels.quant_format import QHead

BM = 16  # rows of the dot tiles: the decode rows padded to the smallest tensor-core tile


@dataclasses.dataclass(frozen=True)
class LMHeadPlan:
    """Programs and tiles of ``lm_head_decode``: items are ``block_n`` vocab rows with all of C, dealt round-robin."""

    programs: int
    block_n: int = 128
    block_k: int = 128
    num_warps: int = 8
    num_stages: int = 4
    # One loop over (item, K step) pairs, the accumulator reset at each item's first step and stored at its last,
    # so the software pipeline runs on across items instead of draining and refilling at each one. H100, bf16, B=1
    # (bench.lm_head, 2026-11-26, µs): gpt2-xl 59.8-59.9 flat with 128x128 tiles, 60.9 nested with 128x64
    # (the two-kernel path 69.9); gpt2 29.0-29.1 vs 30.6 (39.4-39.8); 32- or 16-row tiles lose (65-107).
    flat: bool = True

    def __post_init__(self):
        if self.programs < 1:
            raise ValueError(f"programs={self.programs} must be >= 1")
        check_blocks(block_n=self.block_n, block_k=self.block_k)

    @staticmethod
    def heuristic(programs: int, int8: bool = False, itemsize: int = 2) -> "LMHeadPlan":
        """128×128 tiles; the int8 head's 256 deep (as many bytes a tile as bf16's) where the compute dtype is 16-bit.
        H100, B=1 (bench.lm_head, 2026-11-26, µs): gpt2-xl int8 37.1 vs 38.2 with 128-deep tiles, gpt2 14.8 vs 17.0.
        A float32 model's int8 head keeps 128-deep tiles: widened to float32, a 256-deep tile and its pipeline ask
        for 272 KB of shared memory (H100, 2026-12-05: RESOURCE_EXHAUSTED, 227 KB available)."""
        return LMHeadPlan(programs=programs, block_k=256 if int8 and itemsize <= 2 else 128)


def _lm_head_kernel(r_ref, p_ref, pb_ref, lw_ref, lb_ref, w_ref,  # (B, C), (P, B, C) f32, (C,), (C,), (C,), (V, C)
                    s_ref,  # None, or the int8 head's (V,) float32 scales (w_ref then its (V, C) int8 values)
                    o_ref, xn_ref,  # outputs: (B, V) float32 logits; (G, BM, Cp) scratch, each program's rows
                    *, B: int, C: int, V: int, eps: float, dtype, precision, bn: int, bk: int, flat: bool,
                    interpret: bool):
    pid, g = pl.program_id(0), pl.num_programs(0)
    br, cp = next_pow2(B), next_pow2(C)
    rows = jax.lax.broadcasted_iota(jnp.int32, (br, cp), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (br, cp), 1)
    mask = (rows < B) & (cols < C)
    cmask = jnp.arange(cp) < C

    def ld(ref, m):
        return pltriton.load(ref, mask=m, other=0.0)

    # Prologue: every program finishes and normalises all rows itself (no barrier needed).
    acc = jnp.zeros((br, cp), jnp.float32)
    for p in range(p_ref.shape[0]):
        acc += ld(p_ref.at[jnp.int32(p), pl.ds(0, br), pl.ds(0, cp)], mask)
    lw = ld(lw_ref.at[pl.ds(0, cp)], cmask).astype(jnp.float32)
    lb = ld(lb_ref.at[pl.ds(0, cp)], cmask).astype(jnp.float32)
    y = finish(acc, ld(pb_ref.at[pl.ds(0, cp)], cmask)[None, :], "none", dtype).astype(jnp.float32)
    x = jnp.where(mask, y + ld(r_ref.at[pl.ds(0, br), pl.ds(0, cp)], mask).astype(jnp.float32), 0.0)
    mean = jnp.sum(x, axis=1) / C  # (br,)
    xc = jnp.where(mask, x - mean[:, None], 0.0)
    rstd = jax.lax.rsqrt(jnp.sum(xc * xc, axis=1) / C + eps)  # (br,)
    xn = (xc * rstd[:, None] * lw[None, :] + lb[None, :]).astype(dtype)  # (br, cp) ln_f(x), rounded
    pltriton.store(xn_ref.at[pid, pl.ds(0, br), pl.ds(0, cp)], xn, mask=mask)
    if not interpret:  # (the interpreter runs a program as one thread)
        pltriton.debug_barrier()  # the program's own stores, visible to all its threads

    steps = pl.cdiv(C, bk)
    xrows = jnp.arange(BM)[:, None] < B

    def product(v0, kk):  # (BM, bn) float32: this K step of vocab rows [v0, v0 + bn)
        k0 = kk * bk
        vrows = (v0 + jnp.arange(bn))[:, None] < V  # (bn, 1)
        kcols = (k0 + jnp.arange(bk))[None, :] < C  # (1, bk)
        xt = ld(xn_ref.at[pid, pl.ds(0, BM), pl.ds(k0, bk)], xrows & kcols)  # (BM, bk)
        if s_ref is None:
            wt = ld(w_ref.at[pl.ds(v0, bn), pl.ds(k0, bk)], vrows & kcols)  # (bn, bk): wte rows, K contiguous
        else:  # the int8 head's rows, widened in registers
            wt = pltriton.load(w_ref.at[pl.ds(v0, bn), pl.ds(k0, bk)], mask=vrows & kcols, other=0).astype(dtype)
        return jax.lax.dot_general(xt, wt, (((1,), (1,)), ((), ())), precision=precision,
                                   preferred_element_type=jnp.float32)

    def store(v0, acc, when=True):
        vcols = (v0 + jnp.arange(bn))[None, :] < V
        if s_ref is not None:  # the int8 head: the item's scales on its float32 products
            acc = acc * ld(s_ref.at[pl.ds(v0, bn)], (v0 + jnp.arange(bn)) < V)[None, :]
        pltriton.store(o_ref.at[pl.ds(0, BM), pl.ds(v0, bn)], acc, mask=xrows & vcols & when)

    n_items = pl.cdiv(V, bn)
    mine = jax.lax.div(jnp.maximum(n_items - pid + g - 1, 0), g)  # items pid, pid + g, ...
    if flat:
        def flat_step(t, acc):
            it, kk = jax.lax.div(t, jnp.int32(steps)), jax.lax.rem(t, jnp.int32(steps))
            v0 = (pid + it * g) * bn
            acc = jnp.where(kk == 0, 0.0, acc) + product(v0, kk)
            store(v0, acc, kk == steps - 1)
            return acc

        jax.lax.fori_loop(0, mine * steps, flat_step, jnp.zeros((BM, bn), jnp.float32))
        return

    def item(t, carry):
        v0 = (pid + t * g) * bn
        store(v0, jax.lax.fori_loop(0, steps, lambda kk, acc: acc + product(v0, kk),
                                    jnp.zeros((BM, bn), jnp.float32)))
        return carry

    jax.lax.fori_loop(0, mine, item, jnp.int32(0))


@functools.partial(jax.jit, static_argnames=("eps", "plan", "interpret"))
def lm_head_decode(r: jax.Array, parts: SplitK, ln_w: jax.Array, ln_b: jax.Array, wte: "jax.Array | QHead", *,
                   eps: float, plan: LMHeadPlan | None = None, interpret: bool | None = None) -> jax.Array:
    """Float32 logits ``ln_f(r + finish(parts)) @ wte.T``: r (B, C) the last block's residual, ``parts`` its MLP's
    ``SplitK`` partials (P, B, C), ``ln_w``/``ln_b`` (C,) ln_f's parameters, wte (V, C) the tied head -> (B, V).
    ``wte`` may instead be the int8 head, a ``QHead`` ((V, C) int8, (V,) scales).

    B at most 16 (decode rows). ``plan`` (default ``LMHeadPlan.heuristic``) sets the programs and tiles.
    """
    if r.ndim != 2:
        raise ValueError(f"r must be (B, C), got {r.shape=}")
    B, C = r.shape
    if not 1 <= B <= BM:
        raise ValueError(f"lm_head_decode takes 1..{BM} rows, got {B=}")
    if parts.parts.ndim != 3 or parts.parts.shape[1:] != (B, C) or parts.activation != "none":
        raise ValueError(f"parts {parts.parts.shape} must be unactivated (P, {B}, {C}) partials")
    quant = isinstance(wte, QHead)
    if quant and (wte.q.ndim != 2 or wte.q.shape[1] != C or wte.q.dtype != jnp.int8
                  or wte.scale.shape != (wte.q.shape[0],)):
        raise ValueError(f"an int8 head must be (V, {C}) int8 with (V,) scales: {wte.q.shape} {wte.q.dtype}, "
                         f"scales {wte.scale.shape}")
    if not quant and (wte.ndim != 2 or wte.shape[1] != C or wte.dtype != r.dtype):
        raise ValueError(f"wte {wte.shape} {wte.dtype} must be (V, {C}) {r.dtype}")
    if ln_w.shape != (C,) or ln_b.shape != (C,) or parts.bias.shape != (C,):
        raise ValueError(f"ln_f and bias vectors must be ({C},): {ln_w.shape}, {ln_b.shape}, {parts.bias.shape}")
    V = wte.shape[0]
    interpret = default_interpret(interpret)
    if plan is None:
        from pallas_kernels.decode_layer import default_programs
        plan = LMHeadPlan.heuristic(default_programs(), int8=quant, itemsize=jnp.dtype(r.dtype).itemsize)
    dtype = jnp.dtype(r.dtype)
    kernel = functools.partial(
        _lm_head_kernel, B=B, C=C, V=V, eps=float(eps), dtype=dtype,
        precision=jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None, bn=plan.block_n, bk=plan.block_k,
        flat=plan.flat, interpret=interpret)
    head = (wte.q, wte.scale) if quant else (wte,)
    if not quant:
        kernel = functools.partial(_no_scales, kernel)
    logits, _ = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((B, V), jnp.float32),
                   jax.ShapeDtypeStruct((plan.programs, BM, next_pow2(C)), dtype)],
        grid=(plan.programs,),
        in_specs=[pl.no_block_spec] * (5 + len(head)),
        out_specs=[pl.no_block_spec] * 2,
        compiler_params=compiler_params(plan.num_warps, plan.num_stages),
        interpret=interpret,
        name="jaxgpt_lm_head_decode_int8" if quant else "jaxgpt_lm_head_decode",
    )(r, parts.parts.astype(jnp.float32), parts.bias, ln_w, ln_b, *head)
    return logits


def _no_scales(kernel, r_ref, p_ref, pb_ref, lw_ref, lb_ref, w_ref, o_ref, xn_ref):
    """The float head's kernel: no scales ref."""
    kernel(r_ref, p_ref, pb_ref, lw_ref, lb_ref, w_ref, None, o_ref, xn_ref)


def lm_head_decode_reference(r, parts: SplitK, ln_w, ln_b, wte: "jax.Array | QHead", *, eps: float) -> jax.Array:
    """Pure jnp with the kernel's rounding points: (B, V) float32 logits."""
    dtype = r.dtype
    x = finish(parts.parts.astype(jnp.float32).sum(0), parts.bias, "none", dtype).astype(jnp.float32)
    x = x + r.astype(jnp.float32)
    xc = x - x.mean(-1, keepdims=True)
    y = xc * jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + eps) * ln_w.astype(jnp.float32) + ln_b.astype(
        jnp.float32)
    y = y.astype(dtype).astype(jnp.float32)
    if isinstance(wte, QHead):  # products of the int8 values, then each entry's scale
        return jnp.dot(y, wte.q.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST) * wte.scale
    return jnp.dot(y, wte.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST)
