"""Prefill matmul with a fused bias (+GELU) epilogue for Hopper, on Pallas' Mosaic GPU backend: ``act(x @ w + b)``.

Why: at prefill sizes the Triton-lowered ``matmul.py`` reaches ~460 TFLOP/s on the H100 where cuBLAS (XLA's
``nvjet`` kernels) reaches ~690, and the projections are most of a prefill's time. This kernel uses what Triton's
lowering does not: TMA bulk copies into swizzled shared memory, ``wgmma`` on both operands from shared memory, and
warp specialisation.

A block is three warpgroups (one Pallas thread each). The third only issues TMA copies: the (2·BM, BK) tile of x
and the (BK, BN) tile of w for each K step into a ring of ``stages`` slots, each slot guarded by two "landed"
barriers (one per copy) and one "consumed" barrier (both compute warpgroups arrive). Each compute warpgroup owns BM
rows of the block's 2·BM and accumulates its (BM, BN) float32 tile with ``wgmma`` over the K steps. The epilogue
runs in registers: add the bias (a (BN,) vector TMA-copied once a block, widened to float32 and broadcast along the
rows), GELU (tanh) when asked, round to the output dtype, then one TMA store of the tile through shared memory. Blocks launch
N-tile-fastest, so the blocks in flight share their x rows in L2.

Shapes: M a multiple of 2·BM, N of BN, K of BK (64: one 128-byte swizzle row of bf16); ``plan`` picks (BM, BN) per
shape where this kernel beats the Triton one, and the Pallas backend uses ``matmul.py`` elsewhere.

Measured on the H100 (2026-11-25; CUPTI, M = 8192, µs): 768→2304 55.5 vs Triton 59.6 vs cuBLAS 42.9; 768→3072 68.9
vs 72.3 vs 57.8; 3072→768 66.5 vs 75.4 vs 50.9; 1600→6400 261.6 vs 284.1 vs 224.0; 1600→4800 219.5 vs 216.9 vs
170.8. cuBLAS stays 20-30% ahead: by default this kernel waits for each MMA before releasing its slot
(``delay_release`` keeps one in flight; on the H100 on 2026-11-26 it was no faster, 0-8% slower, so off) and it is
not persistent (no epilogue/mainloop overlap across tiles); see docs/experiments/prefill-kernels.md. bf16/f16 in, f32 accumulation.
In Mosaic GPU's interpreter (CPU tests) the product runs as a jnp dot and the bias is read as a plain array; the
TMA ring, the barriers and the epilogue run as on the GPU, and the wgmma path is checked by lowering for CUDA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.partials import ACTIVATIONS, gelu_tanh

try:
    import jax.experimental.pallas.mosaic_gpu as plgpu
except ImportError:  # pragma: no cover - jax 0.10.2's plgpu imports absl-py
    plgpu = None

COMPUTE_WGS = 2
BLOCK_K = 64
SMEM_BYTES = 227 * 1024  # the H100's shared memory a block may use


def plan(m: int, n: int, k: int, itemsize: int = 2, sms: int = 132) -> tuple[int, int, int] | None:
    """(BM rows per compute warpgroup, BN, stages) for an (m, k) x (k, n) product, or None where this kernel loses.

    Measured on the H100 at M = 8192 (bench/results/h100/2026-11-25-prefill-matmul-tiles.txt): 64 rows a warpgroup with
    192- or 256-wide N tiles beat the Triton matmul by 4-12%; 128-wide tiles tie it and 64-wide ones lose by up to
    50%, so N must divide by 192 or 256 (gpt2-xl's N = 1600 does not: its c_proj stays on Triton). Between the two,
    the one whose blocks fill the last wave over ``sms`` SMs best, the wider on a tie (that rule picks every
    measured winner). Stages: 3, as measured (the most 256-wide tiles fit in shared memory)."""
    if k % BLOCK_K or m % (COMPUTE_WGS * 64):
        return None
    best = None
    for bn in (256, 192):
        if n % bn:
            continue
        blocks = (n // bn) * (m // (COMPUTE_WGS * 64))
        fill = blocks / (-(-blocks // sms) * sms)  # the share of the waves' block slots that have work
        if best is None or fill > best[0] + 0.01:
            best = (fill, bn)
    if best is None:
        return None
    bm, bn = 64, best[1]
    stage = (COMPUTE_WGS * bm * BLOCK_K + BLOCK_K * bn) * itemsize
    fixed = COMPUTE_WGS * bm * bn * itemsize + bn * 4 + 1024
    return bm, bn, int(min(3, (SMEM_BYTES - fixed) // stage))


def _kernel(x_ref, w_ref, b_ref, o_ref, scoped, *, k_steps: int, bm: int, bn: int, stages: int, activation: str,
            delay_release: bool, interpret: bool):
    (x_smem, w_smem, b_smem, o_smem), (x_landed, w_landed, b_landed), consumed = scoped
    wg = lax.axis_index("wg")
    m0 = lax.axis_index("m") * (COMPUTE_WGS * bm)  # first row of this block
    n0 = lax.axis_index("n") * bn

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        rows = pl.ds(wg * bm, bm)  # this warpgroup's rows of the block

        def operands(ks):  # wait for step ks's tiles: (this warpgroup's x rows, w) in SMEM, and the slot
            slot = lax.rem(ks, jnp.array(stages, ks.dtype))
            plgpu.barrier_wait(x_landed.at[slot])
            plgpu.barrier_wait(w_landed.at[slot])
            return x_smem.at[slot, rows], w_smem.at[slot], slot

        def release(ks):  # this warpgroup is done reading step ks's slot
            plgpu.barrier_arrive(consumed.at[lax.rem(ks, jnp.array(stages, ks.dtype))])

        def release_previous(ks):  # delay_release: step ks-1's MMA is done once step ks's is issued, waited to 1
            @pl.when(ks > 0)
            def _():
                release(ks - 1)

        if interpret:  # the interpreter's view of the same product: a jnp dot per step, the sum carried
            def step(ks, acc):
                xs, ws, _ = operands(ks)
                acc = acc + jnp.dot(xs[...], ws[...], preferred_element_type=jnp.float32)
                if delay_release:
                    release_previous(ks)
                else:
                    release(ks)
                return acc

            acc = lax.fori_loop(0, k_steps, step, jnp.zeros((bm, bn), jnp.float32))
            if delay_release:
                release(jnp.int32(k_steps - 1))
        else:
            def product(acc_ref):
                def step(ks, _):
                    xs, ws, _ = operands(ks)
                    plgpu.wgmma(acc_ref, xs, ws)
                    if delay_release:  # keep this MMA in flight; the previous one is done: free its slot
                        plgpu.wgmma_wait(1)
                        release_previous(ks)
                    else:  # the other warpgroup's MMA keeps the tensor cores busy meanwhile
                        plgpu.wgmma_wait(0)
                        release(ks)

                lax.fori_loop(0, k_steps, step, None)
                if delay_release:
                    plgpu.wgmma_wait(0)
                    release(jnp.int32(k_steps - 1))
                return acc_ref[...]

            acc = pl.run_scoped(product, plgpu.ACC((bm, bn), jnp.float32))  # (BM, BN) f32
        plgpu.barrier_wait(b_landed)
        if interpret:
            bias = b_smem[...]
        else:
            bias = plgpu.load(b_smem, (), layout=plgpu.Layout.WGMMA.reduce(0))  # (BN,) along the columns
        y = acc + lax.broadcast_in_dim(bias.astype(jnp.float32), (bm, bn), [1])
        if activation == "gelu_tanh":
            y = gelu_tanh(y)
        o_smem.at[wg][...] = y.astype(o_smem.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem.at[wg], o_ref.at[pl.ds(m0 + wg * bm, bm), pl.ds(n0, bn)])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WGS)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")
        plgpu.copy_gmem_to_smem(b_ref.at[pl.ds(n0, bn)], b_smem, b_landed)

        def load(ks, slot):
            kk = pl.ds(ks * BLOCK_K, BLOCK_K)
            plgpu.copy_gmem_to_smem(x_ref.at[pl.ds(m0, COMPUTE_WGS * bm), kk], x_smem.at[slot], x_landed.at[slot])
            plgpu.copy_gmem_to_smem(w_ref.at[kk, pl.ds(n0, bn)], w_smem.at[slot], w_landed.at[slot])

        for i in range(min(stages, k_steps)):
            load(i, i)

        @pl.loop(0, max(k_steps - stages, 0))
        def _(ks):
            slot = lax.rem(ks, jnp.array(stages, ks.dtype))
            plgpu.barrier_wait(consumed.at[slot])  # both warpgroups are done with step ks: reuse its slot
            load(ks + stages, slot)

        @pl.loop(max(k_steps - stages, 0), k_steps)
        def _(ks):  # observe the last steps' consumed phases too
            plgpu.barrier_wait(consumed.at[lax.rem(ks, jnp.array(stages, ks.dtype))])


@functools.partial(jax.jit, static_argnames=("activation", "block_m", "block_n", "stages", "delay_release",
                                             "interpret"))
def matmul_mgpu(x: jax.Array, w: jax.Array, b: jax.Array, *, activation: str = "none", block_m: int | None = None,
                block_n: int | None = None, stages: int | None = None, delay_release: bool = False,
                interpret: bool | None = None) -> jax.Array:
    """``act(x @ w + b)``: x (..., K), w (K, N), b (N,) -> (..., N) in x's dtype, on Mosaic GPU (Hopper).

    ``block_m`` (rows per compute warpgroup), ``block_n`` and ``stages`` default to ``plan``'s choice; M must be a
    multiple of 2·block_m, N of block_n, K of 64. ``delay_release`` keeps one MMA in flight per warpgroup and frees
    each slot a step later (``wgmma_wait(1)``, as jax's Hopper matmul does): correct in the interpreter and lowered
    for CUDA, not yet timed on the GPU, so off by default. ``interpret`` (default: off a GPU) runs Mosaic GPU's
    interpreter.
    """
    if plgpu is None:
        raise ValueError("Mosaic GPU needs jax.experimental.pallas.mosaic_gpu (and absl-py on jax 0.10)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{activation=} must be one of {ACTIVATIONS}")
    if w.ndim != 2 or x.shape[-1] != w.shape[0] or b.shape != (w.shape[1],):
        raise ValueError(f"shapes do not fit x @ w + b: {x.shape=}, {w.shape=}, {b.shape=}")
    if jnp.dtype(x.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) or w.dtype != x.dtype:
        raise ValueError(f"x and w must both be bfloat16 or float16, got {x.dtype} and {w.dtype}")
    lead, K, N = x.shape[:-1], w.shape[0], w.shape[1]
    x2 = x.reshape(-1, K)  # (M, K)
    M = x2.shape[0]
    auto = plan(M, N, K, jnp.dtype(x.dtype).itemsize)
    if auto is None and not (block_m and block_n and stages):
        raise ValueError(f"no Mosaic matmul tiling planned for M={M}, N={N}, K={K} (K a multiple of {BLOCK_K}, "
                         f"N of 192 or 256, M of 128; or pass block_m, block_n and stages)")
    bm, bn, st = block_m or auto[0], block_n or auto[1], stages or auto[2]
    if M % (COMPUTE_WGS * bm) or N % bn or K % BLOCK_K or bn % 64 or bn > 256 or bm not in (64, 128) or st < 1:
        raise ValueError(f"M={M} must be a multiple of {COMPUTE_WGS * bm} (block_m 64 or 128), N={N} of block_n={bn} "
                         f"(a multiple of 64, at most 256), K={K} of {BLOCK_K}; stages={st} >= 1")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    dtype = x.dtype
    k_steps = K // BLOCK_K
    tiled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))

    def entry(x_ref, w_ref, b_ref, o_ref):
        scratch = (plgpu.SMEM((st, COMPUTE_WGS * bm, BLOCK_K), dtype, transforms=tiled),
                   plgpu.SMEM((st, BLOCK_K, bn), dtype, transforms=tiled),
                   plgpu.SMEM((bn,), b.dtype),
                   plgpu.SMEM((COMPUTE_WGS, bm, bn), dtype, transforms=tiled))
        pl.run_scoped(
            lambda *s: _kernel(x_ref, w_ref, b_ref, o_ref, s, k_steps=k_steps, bm=bm, bn=bn, stages=st,
                               activation=activation, delay_release=delay_release, interpret=interpret),
            scratch,
            (plgpu.Barrier(num_barriers=st), plgpu.Barrier(num_barriers=st), plgpu.Barrier()),
            plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=st),
            collective_axes="wg",
        )

    kw = {}
    if interpret:
        from pallas_kernels.flash_attention_mgpu import interpret_params
        kw["interpret"] = interpret_params()
    out = plgpu.kernel(
        entry,
        out_type=jax.ShapeDtypeStruct((M, N), dtype),
        grid=(N // bn, M // (COMPUTE_WGS * bm)),  # the first axis launches fastest: blocks in flight share x rows
        grid_names=("n", "m"),
        num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        **kw,
    )(x2, w, b)  # the bias in its own dtype, widened in registers (a cast here was a kernel per call)
    return out.reshape(*lead, N)
