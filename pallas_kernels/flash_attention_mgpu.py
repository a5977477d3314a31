"""Causal flash attention for Hopper on Pallas' Mosaic GPU backend (wgmma, TMA, warp specialisation).

Status: the Pallas backend's prefill attention on Hopper GPUs. H100, bf16, µs (2026-11-26, one run, best config
each; docs/experiments/prefill-kernels.md): B8 T1024 H12 51.8 (tokamax Mosaic 53.5, cuDNN 45.2), B8 T1024 H25 99.8 (102.2, 84.1),
B4 T4096 H12 241.8 (275.9, 252.7), B1 T1024 H12 12.4 (12.5, 12.3), B8 T128 H12 4.4 (4.5, 4.7). Built for GPT-2's
attention: packed ``(B, T, 3, H, D)`` qkv read in place by TMA (no q/k/v slicing copies), bf16 or f16, head_dim 64
(one 128-byte swizzle row), causal.

A block is three warpgroups (one Pallas thread each): two compute warpgroups own 64 query rows each (128 a block),
the third only issues TMA copies of K and V into a ring of ``stages`` SMEM slots, guarded by "landed" barriers
(TMA) and "consumed" signals (both compute warpgroups arrive, the TMA warpgroup waits before reusing a slot).
Per KV step a compute warpgroup issues ``S = Q·Kᵀ`` on the tensor cores (``wgmma``), lets the other warpgroup take
the tensor cores, runs the online softmax in base 2 (the 1/√D·log2(e) scale folded into one multiply), casts P to
the input dtype in registers, waits for its turn and runs ``P·V`` into its running accumulator with P as the
register operand: FA3's ping-pong, so one warpgroup's softmax hides behind the other's products. Both warpgroups
run the block's KV steps (the lower one's last step may be wholly masked), so every barrier sees both each step;
the causal loop is split into unmasked blocks and masked diagonal blocks; query tiles run longest first.

On the GPU the schedule and the "consumed" signals are hardware named barriers (``bar.sync``/``bar.arrive``, as in
tokamax and FA3) and Mosaic's automatic warpgroup barriers are off. In the interpreter (CPU tests) the same
protocol runs on mbarriers (the interpreter has no rule for inline PTX) and the two products as jnp dots (jax
0.10.2's interpreter can take neither a transposed SMEM operand nor ``pl.run_state``); the TMA copies from the
packed layout, the barrier order, the causal split and the softmax run as on the GPU, and the wgmma path is
checked by lowering for CUDA.

Measured (2026-11-26, docs/experiments/prefill-kernels.md): the ping-pong with named barriers and in-place P·V took B8 T1024 H12 from
56.2 to 51.8 µs against the 2026-11-25 kernel (two-party schedule barriers, a fresh P·V accumulator, a flush loop).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

try:
    import jax.experimental.pallas.mosaic_gpu as plgpu
except ImportError:  # pragma: no cover - jax 0.10.2's plgpu imports absl-py
    plgpu = None

BLOCK_Q = 64  # query rows per compute warpgroup (a wgmma tile is 64 rows)
COMPUTE_WGS = 2
ORDERS = ("tiles_outer", "batch_outer")


def interpret_params():
    """The Mosaic GPU interpreter's parameters (exported on jax >= 0.11, private on 0.10.2)."""
    try:
        return plgpu.InterpretGPUParams()
    except AttributeError:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
        return InterpretGPUParams()


NAMED_BASE = 4  # Mosaic GPU keeps the lower hardware barrier IDs (0: the block, 1-3: one per warpgroup)
MAX_STAGES = (16 - NAMED_BASE - 2) // 2  # IDs: the schedule (2), then K and V "consumed" (one per stage each)


def _named_barrier(op: str, barrier_id, num_threads: int):
    """``bar.sync`` / ``bar.arrive`` on a hardware named barrier (inline PTX: the GPU only, no interpreter rule)."""
    from jaxlib.mlir import ir
    from jaxlib.mlir.dialects import llvm

    if isinstance(barrier_id, int):
        @plgpu.inline_mgpu()
        def _(_ctx):
            llvm.inline_asm(ir.Type.parse("!llvm.void"), [], f"bar.{op} {barrier_id}, {num_threads};", "",
                            has_side_effects=True)
        return _()

    @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WG_SPLAT,))
    def _(_ctx, bid):
        llvm.inline_asm(ir.Type.parse("!llvm.void"), [bid.registers[()]], f"bar.{op} $0, {num_threads};", "r",
                        has_side_effects=True)
    return _(barrier_id)


def _kernel(qkv_ref, out_ref, scoped, *, seq: int, block_kv: int, stages: int, dtype, interpret: bool):
    """One block: two compute warpgroups of 64 query rows each and a TMA warpgroup (see the module docstring).

    On the GPU the schedule and "consumed" signals are hardware named barriers and P·V accumulates in place; the
    interpreter runs the same protocol on mbarriers and the products as jnp dots.
    """
    named = not interpret

    def cast(x, layout):
        return x if interpret else plgpu.layout_cast(x, layout)

    def iota(shape, dim):
        if interpret:
            return lax.broadcasted_iota(jnp.int32, shape, dim)
        return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=plgpu.Layout.WGMMA)

    b, h = lax.axis_index("batch"), lax.axis_index("heads")
    n_tiles = seq // (COMPUTE_WGS * BLOCK_Q)
    tile = n_tiles - 1 - lax.axis_index("q_seq")  # longest (last) query tiles first
    (qo_smem2, k_smem, v_smem), (k_landed, v_landed, q_landed), (k_consumed, v_consumed), schedule = scoped
    wg = lax.axis_index("wg")
    kv_steps = pl.cdiv((tile + 1) * (COMPUTE_WGS * BLOCK_Q), jnp.array(block_kv, jnp.int32))  # causal
    scale_log2 = (1.0 / math.sqrt(qkv_ref.shape[-1])) * math.log2(math.e)
    D = qkv_ref.shape[-1]
    all_threads = (COMPUTE_WGS + 1) * 128
    k_cons_id, v_cons_id = NAMED_BASE + 2, NAMED_BASE + 2 + stages

    def slot_of(kv):
        return lax.rem(kv, jnp.array(stages, kv.dtype))

    def arrive_other():  # the other warpgroup may take the tensor cores
        if named:
            _named_barrier("arrive", NAMED_BASE + 1 - wg, 2 * 128)
        else:
            plgpu.barrier_arrive(schedule.at[1 - wg])

    def sync_own():  # wait until the other warpgroup let us
        if named:
            _named_barrier("sync", NAMED_BASE + wg, 2 * 128)
        else:
            plgpu.barrier_wait(schedule.at[wg])

    def consumed(which: str, slot):  # compute side: this slot's K (or V) may be overwritten
        if named:
            _named_barrier("arrive", (k_cons_id if which == "k" else v_cons_id) + slot, all_threads)
        else:
            plgpu.barrier_arrive((k_consumed if which == "k" else v_consumed).at[slot])

    def await_consumed(which: str, kv, slot):  # TMA side: before step kv's load overwrites the slot
        if named:  # (the compute side's prologue arrived once for each slot's first load)
            _named_barrier("sync", (k_cons_id if which == "k" else v_cons_id) + slot, all_threads)
        else:
            pl.when(kv >= stages)(lambda: plgpu.barrier_wait((k_consumed if which == "k" else v_consumed).at[slot]))

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        qo_smem = qo_smem2.at[wg]
        q_base = tile * (COMPUTE_WGS * BLOCK_Q) + wg * BLOCK_Q
        plgpu.copy_gmem_to_smem(qkv_ref.at[b, pl.ds(q_base, BLOCK_Q), 0, h], qo_smem, q_landed.at[wg])
        if named:  # the ring starts empty: the first `stages` loads need no consumer
            for i in range(stages):
                consumed("k", i)
                consumed("v", i)
        m = cast(jnp.full((BLOCK_Q,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
        l = cast(jnp.full((BLOCK_Q,), 0.0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
        acc = cast(jnp.full((BLOCK_Q, D), 0.0, jnp.float32), plgpu.Layout.WGMMA)
        plgpu.barrier_wait(k_landed.at[0])
        plgpu.barrier_wait(q_landed.at[wg])
        pl.when(wg == 1)(sync_own)

        def step(kv, carry, masked: bool = False):
            acc, m, l = carry
            slot = slot_of(kv)

            def qk(s_ref):
                plgpu.wgmma(s_ref, qo_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                arrive_other()
                return s_ref[...]

            if interpret:  # 0.10.2's interpreter has no transposed-SMEM wgmma operand: the same product in jnp
                s = jnp.dot(qo_smem[...], k_smem.at[slot][...].T, preferred_element_type=jnp.float32)
                arrive_other()
            else:
                s = pl.run_scoped(qk, plgpu.ACC((BLOCK_Q, block_kv), jnp.float32))  # (BQ, BKV) f32
            consumed("k", slot)
            if masked:
                rows, cols = iota((BLOCK_Q, block_kv), 0), iota((BLOCK_Q, block_kv), 1)
                s = jnp.where(rows + q_base >= cols + kv * block_kv, s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(axis=1) * scale_log2)  # m in the log2 domain
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s * scale_log2 - lax.broadcast_in_dim(m_new, s.shape, [0]))
            l = l * alpha + p.sum(axis=1)
            acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
            p_lo = p.astype(dtype)
            acc, p_lo = lax.optimization_barrier((acc, p_lo))
            l, m_new = lax.optimization_barrier((l, m_new))
            plgpu.barrier_wait(v_landed.at[slot])
            sync_own()  # the tensor cores are ours

            def wait_next_k():  # inside the P·V scope on the GPU, so the next K's wait overlaps the MMA
                @pl.when(kv + 1 < kv_steps)
                def _():
                    plgpu.barrier_wait(k_landed.at[slot_of(kv + 1)])

            def pv(acc_ref):  # P·V into the running accumulator
                plgpu.wgmma(acc_ref, p_lo, v_smem.at[slot])
                wait_next_k()

            if interpret:  # 0.10.2's interpreter cannot run pl.run_state: the same sum in jnp
                acc = acc + jnp.dot(p_lo, v_smem.at[slot][...], preferred_element_type=jnp.float32)
                wait_next_k()
            else:
                acc = pl.run_state(pv)(plgpu.ACC.init(acc))
            consumed("v", slot)
            return acc, m_new, l

        full = lax.div(q_base, jnp.array(block_kv, jnp.int32))  # blocks wholly below the diagonal
        carry = lax.fori_loop(0, full, step, (acc, m, l))
        acc, m, l = lax.fori_loop(full, kv_steps, functools.partial(step, masked=True), carry)
        pl.when(wg == 0)(arrive_other)  # matches warpgroup 1's first sync
        acc = acc * lax.broadcast_in_dim(1.0 / l, (BLOCK_Q, D), [0])
        qo_smem[...] = acc.astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[b, pl.ds(q_base, BLOCK_Q), h])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WGS)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")

        @pl.loop(0, kv_steps)
        def _(kv):
            slot = slot_of(kv)
            rows = pl.ds(kv * block_kv, block_kv)
            await_consumed("k", kv, slot)
            plgpu.copy_gmem_to_smem(qkv_ref.at[b, rows, 1, h], k_smem.at[slot], k_landed.at[slot])
            await_consumed("v", kv, slot)
            plgpu.copy_gmem_to_smem(qkv_ref.at[b, rows, 2, h], v_smem.at[slot], v_landed.at[slot])

        if not named:
            @pl.loop(jnp.maximum(kv_steps - stages, 0), kv_steps)
            def _(kv):  # drain: observe the last steps' consumed phases too
                plgpu.barrier_wait(k_consumed.at[slot_of(kv)])
                plgpu.barrier_wait(v_consumed.at[slot_of(kv)])


@functools.partial(jax.jit, static_argnames=("block_kv", "stages", "order", "interpret"))
def flash_attention_mgpu(qkv: jax.Array, *, block_kv: int = 128, stages: int = 2, order: str = "batch_outer",
                         interpret: bool | None = None) -> jax.Array:
    """Causal self-attention of packed qkv (B, T, 3, H, D) -> (B, T, H, D) on Mosaic GPU (Hopper).

    Any T: it is padded at the end to a multiple of 128 (two 64-row query tiles a block) and of ``block_kv``,
    which changes no real row (causal: a query never sees a later key). D = 64; bf16 or f16. ``order``: the launch
    order of the blocks, ``"batch_outer"`` (one batch row at a time, its query tiles longest first: the blocks in
    flight share that row's K/V in L2; measured faster at T = 1024 and 4096) or ``"tiles_outer"`` (every (batch,
    head)'s longest tile first over the whole GPU). ``interpret`` (default: off a GPU) runs Mosaic GPU's interpreter.
    """
    if plgpu is None:
        raise ValueError("Mosaic GPU needs jax.experimental.pallas.mosaic_gpu (and absl-py on jax 0.10)")
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be (B, T, 3, H, D), got {qkv.shape}")
    B, T, _, H, D = qkv.shape
    if D != 64:
        raise ValueError(f"head_dim {D=} must be 64 (one 128-byte swizzle row)")
    if jnp.dtype(qkv.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"dtype {qkv.dtype} must be bfloat16 or float16")
    if block_kv not in (64, 128, 256):
        raise ValueError(f"{block_kv=} must be 64, 128 or 256")
    if not 1 <= stages <= MAX_STAGES:
        raise ValueError(f"{stages=} must be 1..{MAX_STAGES} (two named barriers a stage, 16 in all)")
    if order not in ORDERS:
        raise ValueError(f"{order=} must be one of {ORDERS}")
    if T < 1:
        raise ValueError(f"seq_len {T=} must be >= 1")
    tp = -(-T // max(block_kv, COMPUTE_WGS * BLOCK_Q)) * max(block_kv, COMPUTE_WGS * BLOCK_Q)
    if tp != T:  # pad the end: causal rows < T never attend to the padding, and its rows are sliced off
        out = flash_attention_mgpu(jnp.pad(qkv, ((0, 0), (0, tp - T), (0, 0), (0, 0), (0, 0))), block_kv=block_kv,
                                   stages=stages, order=order, interpret=interpret)
        return out[:, :T]
    stages = max(1, min(stages, T // block_kv))
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    dtype = qkv.dtype
    tiling = plgpu.TilingTransform((8, 64))
    swizzle = plgpu.SwizzleTransform(128)

    def entry(qkv_ref, out_ref):
        scratch = (plgpu.SMEM((COMPUTE_WGS, BLOCK_Q, D), dtype, transforms=(tiling, swizzle)),
                   plgpu.SMEM((stages, block_kv, D), dtype, transforms=(tiling, swizzle)),
                   plgpu.SMEM((stages, block_kv, D), dtype, transforms=(tiling, swizzle)))
        pl.run_scoped(
            lambda *s: _kernel(qkv_ref, out_ref, s, seq=T, block_kv=block_kv, stages=stages, dtype=dtype,
                               interpret=interpret),
            scratch,
            (plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages),
             plgpu.Barrier(num_barriers=COMPUTE_WGS)),
            (plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),) * 2,
            plgpu.Barrier(num_arrivals=1, num_barriers=COMPUTE_WGS),  # the schedule: one per warpgroup, its turn
            collective_axes="wg",
        )

    kw = dict(interpret=interpret_params()) if interpret else {}
    n_tiles = T // (COMPUTE_WGS * BLOCK_Q)
    if order == "tiles_outer":  # the first grid axis varies fastest in the launch order
        grid, names = (H, B, n_tiles), ("heads", "batch", "q_seq")
    else:
        grid, names = (H, n_tiles, B), ("heads", "q_seq", "batch")
    return plgpu.kernel(
        entry,
        out_type=jax.ShapeDtypeStruct((B, T, H, D), dtype),
        grid=grid,
        grid_names=names,
        num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        # No automatic warpgroup barriers around SMEM stores and TMA issues: no thread reads and writes one region,
        # and the epilogue's store is fenced by commit_smem.
        compiler_params=plgpu.CompilerParams(approx_math=True, unsafe_no_auto_barriers=True),
        **kw,
    )(qkv)
