"""Decode projection (a few rows times a weight matrix) on Mosaic GPU, with programmatic dependent launch.

Why: at decode a block's matrix products read ~61 MB of gpt2-xl weights (21 µs at the copy rate) but the Triton
block kernel takes ~41 µs, because its weight stream runs in series with fixed work (launch, grid barriers,
LayerNorm prologues, attention; bench/NOTES.md sessions 7-10). The weights never depend on the activations, so a
kernel can start streaming its weights before the previous kernel has finished: on Hopper, a kernel launched with
programmatic dependent launch (PDL) may start while its predecessor runs, and waits (``griddepcontrol.wait``) only
before it reads what the predecessor wrote. jax 0.11 marks a Mosaic GPU kernel whose body uses the
``griddepcontrol`` instructions for such a launch (``mosaic_gpu.uses_pdl``).

Measured on the H100 (session 11, bench/pdl_chain.py): the kernels did not overlap on this jax/XLA (a chain takes
the sum of its kernels' durations even with the wait removed, command buffers and ``--xla_gpu_enable_pdl`` or
not), and gpt2-xl's four projections take 32 µs a block (1.9 TB/s) as four such kernels: an experiment, not on the
model's path. bench/block_skeleton_mgpu.py carries the same product into one persistent kernel.

What it computes: partial products ``p[s, n, m] = sum_{k in split s} w[k, n] * x[m, k]`` for x (M <= 8, K) and
w (K, N), in float32, transposed (N before M) because the product runs as ``wgmma`` with the weight tile as the
64-row A operand and x as the 8-wide B operand ("swap AB": M = 8 would waste a 64-row MMA the other way round).
``matvec_mgpu_finish`` sums the splits and transposes; the model's fused path will do that in the next kernel's
prologue instead.

A block is one warpgroup and one (K split, 64 columns) item. It issues every weight tile of its item (TMA, one
barrier each) first, then lets the next kernel launch, then waits for the previous kernel, then loads its x tiles
and multiplies tile by tile as they land. An item holds at most ``MAX_TILES`` 64×64 tiles (shared memory), so
several blocks fit on an SM and, where PDL takes effect, the next kernel's blocks could start streaming while this
one finishes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

try:
    import jax.experimental.pallas.mosaic_gpu as plgpu
except ImportError:  # pragma: no cover - jax 0.10.2's plgpu imports absl-py
    plgpu = None

TILE = 64  # K and N of a weight tile: one 128-byte swizzle row of bf16
ROWS = 8  # x rows a product carries (wgmma's smallest N)
MAX_TILES = 16  # weight tiles an item may hold in shared memory (16 x 8 KB)


def _transposed(ref):
    """A transposed view of a 2-D SMEM ref (``ref.T`` on jax >= 0.11, ``transpose_ref`` before)."""
    try:
        return ref.T
    except (AttributeError, NotImplementedError, TypeError):
        return plgpu.transpose_ref(ref, (1, 0))


def _kernel(x_ref, w_ref, o_ref, scoped, *, tiles: int, pdl: bool, pdl_wait: bool, interpret: bool):
    (w_smem, x_smem, o_smem), (w_landed, x_landed) = scoped
    n0 = lax.axis_index("n") * TILE
    split = lax.axis_index("s")
    k0 = split * (tiles * TILE)
    for i in range(tiles):  # the weights depend on nothing: stream them before waiting for the previous kernel
        plgpu.copy_gmem_to_smem(w_ref.at[pl.ds(k0 + i * TILE, TILE), pl.ds(n0, TILE)], w_smem.at[i], w_landed.at[i])
    if pdl:
        plgpu.griddepcontrol_launch_dependents()  # the next kernel may start (it waits for this one's end itself)
        if pdl_wait:  # (off only in bench.pdl_chain's test of whether kernels overlap at all)
            plgpu.griddepcontrol_wait()  # the previous kernel has finished and its writes are visible
    for i in range(tiles):
        plgpu.copy_gmem_to_smem(x_ref.at[:, pl.ds(k0 + i * TILE, TILE)], x_smem.at[i], x_landed.at[i])

    if interpret:  # jax 0.10.2's interpreter takes no transposed SMEM operand: the same product as jnp dots
        acc = jnp.zeros((TILE, ROWS), jnp.float32)
        for i in range(tiles):
            plgpu.barrier_wait(w_landed.at[i])
            plgpu.barrier_wait(x_landed.at[i])
            acc = acc + jnp.dot(w_smem[i].T, x_smem[i].T, preferred_element_type=jnp.float32)  # (64, 8)
    else:
        def product(acc_ref):
            for i in range(tiles):
                plgpu.barrier_wait(w_landed.at[i])
                plgpu.barrier_wait(x_landed.at[i])
                plgpu.wgmma(acc_ref, _transposed(w_smem.at[i]), _transposed(x_smem.at[i]))
            plgpu.wgmma_wait(0)
            return acc_ref[...]

        acc = pl.run_scoped(product, plgpu.ACC((TILE, ROWS), jnp.float32))  # (64 columns, 8 rows) f32
    o_smem[...] = acc
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_ref.at[split, pl.ds(n0, TILE)])
    plgpu.wait_smem_to_gmem(0)


@functools.partial(jax.jit, static_argnames=("splits", "pdl", "pdl_wait", "interpret"))
def matvec_mgpu(x: jax.Array, w: jax.Array, *, splits: int, pdl: bool = True, pdl_wait: bool = True,
                interpret: bool | None = None) -> jax.Array:
    """Partial products (splits, N, 8) float32 of x (M <= 8, K) and w (K, N), both bfloat16 or float16.

    K must be a multiple of 64·splits with at most ``MAX_TILES`` 64-row tiles a split, N a multiple of 64. Row m of
    the product is ``matvec_mgpu_finish(p, M)[m]``; rows past M are zeros. ``pdl`` lets the kernel overlap the one
    before it (on the GPU; the interpreter runs it in order). ``pdl_wait=False`` drops the wait for the previous
    kernel: only for timing kernels that read nothing another kernel writes (bench.pdl_chain).
    """
    if plgpu is None:
        raise ValueError("Mosaic GPU needs jax.experimental.pallas.mosaic_gpu (and absl-py on jax 0.10)")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"shapes do not fit x @ w: {x.shape=}, {w.shape=}")
    M, K = x.shape
    N = w.shape[1]
    if jnp.dtype(x.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) or w.dtype != x.dtype:
        raise ValueError(f"x and w must both be bfloat16 or float16, got {x.dtype} and {w.dtype}")
    if not 1 <= M <= ROWS:
        raise ValueError(f"{M=} rows must be 1..{ROWS}")
    if splits < 1 or K % (TILE * splits) or K // (TILE * splits) > MAX_TILES or N % TILE:
        raise ValueError(f"K={K} must be a multiple of {TILE}·{splits=} with at most {MAX_TILES} tiles a split, "
                         f"N={N} of {TILE}")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    tiles = K // (TILE * splits)
    if M < ROWS:
        x = jnp.pad(x, ((0, ROWS - M), (0, 0)))
    tiled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))

    def entry(x_ref, w_ref, o_ref):
        pl.run_scoped(
            lambda *s: _kernel(x_ref, w_ref, o_ref, s, tiles=tiles, pdl=pdl and not interpret,
                               pdl_wait=pdl_wait, interpret=interpret),
            (plgpu.SMEM((tiles, TILE, TILE), w.dtype, transforms=tiled),
             plgpu.SMEM((tiles, ROWS, TILE), x.dtype, transforms=tiled),
             plgpu.SMEM((TILE, ROWS), jnp.float32)),
            (plgpu.Barrier(num_barriers=tiles), plgpu.Barrier(num_barriers=tiles)),
        )

    kw = {}
    if interpret:
        from pallas_kernels.flash_attention_mgpu import interpret_params
        kw["interpret"] = interpret_params()
    return plgpu.kernel(
        entry,
        out_type=jax.ShapeDtypeStruct((splits, N, ROWS), jnp.float32),
        grid=(N // TILE, splits),
        grid_names=("n", "s"),
        compiler_params=plgpu.CompilerParams(approx_math=True),
        **kw,
    )(x, w)


def matvec_mgpu_finish(p: jax.Array, rows: int) -> jax.Array:
    """(rows, N) float32 from ``matvec_mgpu``'s (splits, N, 8) partials: the splits summed, transposed."""
    return p.sum(0).T[:rows]  # (rows, N)


def matvec_mgpu_reference(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w in float32: (M, K) x (K, N) -> (M, N)."""
    return jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32), precision=lax.Precision.HIGHEST)
