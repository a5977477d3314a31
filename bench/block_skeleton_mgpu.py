"""Experiment (session 11): can one persistent Mosaic GPU kernel stream a decode block's weights across grid
barriers at the copy rate?

The skeleton of a block kernel: gpt2-xl's four projections at B = 1 as four phases of one kernel, one block per
SM, a grid-wide barrier (a global semaphore counted up, waited on without decrement) between phases. Each block
has two warpgroups: a producer that only TMA-copies its weight tiles, phase after phase, into a ring of shared
memory slots (weights depend on nothing, so it never waits for a barrier, only for free slots), and a consumer that
waits for the barrier, loads its x tiles, multiplies each item's landed tiles (swap-AB ``wgmma`` as in
``pallas_kernels/matvec_mgpu.py``) and writes (64, 8) float32 partials. x is a fixed input per phase here (no
LayerNorm, no attention, no partial sums between phases): this measures the stream and the barriers, which the
Triton block kernel (41 µs a gpt2-xl block, ~20 µs of it fixed work in series with the stream) cannot overlap.

Measured on the H100 (session 11; bench/NOTES.md): 33.7 µs a block as first built, 29.7 with ``eager`` slot
release and the producer's copies in flight capped at 4 (``inflight``): more bytes in flight than the bandwidth
needs seem only to lengthen the queue that every barrier poll and x load waits in. The stream alone with its three
barriers: 25.4 µs; without barriers 22.8 (2.7 TB/s). The modes and diagnostics (``xload``, ``wait``) stay for the
next step, which moves LayerNorm and attention into the consumer.

    python -m bench.block_skeleton_mgpu --blocks 4 --stages 16 --inflight 4 --modes 11111,10111

Session 13 (issue 10): quantized weights (``--quant int8,int4``, stored output-major, widened in the kernel: in
registers as wgmma's A operand, or by ``--widen`` warpgroups into a bf16 ring in shared memory, or ``--matvec`` on
CUDA cores) on shapes whose K divides into 128-deep tiles (``--shapes``, C = 1536). Best (H100): int8 22.6, int4
19.9 against bf16 28.7 µs a block, with two wideners, two consumers and the scales read early:

    python -m bench.block_skeleton_mgpu --blocks 4 --modes 11111 --shapes 1536:4608:4,1536:1536:4,1536:6144:4,6144:1536:16 \
        --qtile-k 128 --inflight 4 --consumers 2 --quant int8,int4 --stages 8 --widen 2 --wstages 6 --scale-at start

Session 14: ``--direct 1`` (the wideners store the widened tile in its load layout, no relayout): int8 21.7, int4
19.4 µs there; at gpt2-xl's own shapes (default ``--shapes``, ``--qtile-k 64 --stages 10 --wstages 10``) int8 25.8,
int4 23.7 against bf16 29.6.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

TILE, ROWS = 64, 8
SHAPES = ((1600, 4800, 5), (1600, 1600, 5), (1600, 6400, 5), (6400, 1600, 20))  # (K, N, splits) per phase


def skeleton(xs, ws, *, grid: int, stages: int, barriers: bool = True, compute: bool = True,
             xload: bool = True, wait: bool = True, eager: bool = False, inflight: int = 0,
             consumers: int = 1, stream: bool = True, profile_dir: str = "", interpret: bool = False,
             scales=None, qtile_k: int = TILE, shapes=SHAPES, cast_first: bool = False,
             pipelined: bool = False, widen: int = 0, wstages: int = 0, matvec: bool = False,
             scale_at: str = "end", direct: bool = False):
    """Partials per phase, (splits, N, 8) float32, of x_p (8, K_p) and w_p (K_p, N_p). ``compute=False`` only
    waits for each tile and frees its slot (the stream alone; outputs left unwritten). Diagnostics (outputs
    wrong): ``xload=False`` skips the x tiles (compute=False only), ``wait=False`` signals the barrier without
    waiting for it. ``eager`` frees each slot as soon as its tile's MMA has retired (``wgmma_wait(1)``) instead of
    after the item's last tile, so a ring may be shallower than an item. ``inflight`` (> 0) caps the producer's
    copies in flight: it issues tile t only once tile t - inflight has landed, so the memory queues stay short
    while landed tiles pile up in the ring. ``consumers`` warpgroups take a block's items in turn (a slot then
    always serves the same consumer: every item has the same tile count and the ring holds whole rounds).
    ``stream=False`` (with compute=False) copies no weights at all: the barriers and x loads on a quiet GPU.

    Quantized weights (session 13): ``ws`` int8 or int4 laid out (N_p, K_p) (output-major, so a (64, 64) tile is
    wgmma's A operand as stored) and ``scales`` one (N_p,) float32 vector a phase (int4: one scale a row of the
    tile for the whole matrix here, not group-wise; a bench of the stream and the in-register dequantisation). The
    consumer loads each tile into registers (``WGMMA_UPCAST_2X`` / ``_4X``), widens it to x's dtype, frees the slot
    at once and multiplies from registers; the scale multiplies the item's product. ``qtile_k`` (64 or 128) is a
    quantized tile's depth (its x tile's too); ``shapes`` the (K, N, splits) whose splits apply. ``cast_first``
    widens the tile in its load layout and relayouts the 16-bit values (else the 8/4-bit ones, then widens);
    ``pipelined`` widens tile i + 1 while tile i's MMA is in flight (else after it retires).

    ``widen`` (> 0, quantized, eager): that many warpgroups take the widening off the consumers' path. Widener w
    takes the block's tiles t with t % widen == w: it waits for the quantized tile, loads it into registers, frees
    its slot, widens it and stores it into a second ring of ``wstages`` x's-dtype slots in shared memory, which
    the consumers multiply from as in the float skeleton (A from shared memory).

    ``matvec`` (quantized, B = 1): no wgmma. The consumer loads each tile into registers in the WGMMA layout,
    widens it to float32, multiplies it by x's row 0 (read from global memory at the item's start) broadcast over
    the tile's rows and accumulates elementwise; one row reduction an item. Rows 1-7 of the outputs repeat row 0.

    ``direct`` (with ``widen``, session 14): the wideners store the widened tile in its load layout
    (``WGMMA_UPCAST_2X`` / ``_4X``: the store puts each element at its place in the swizzled slot), skipping the
    relayout to ``WGMMA`` (its warp shuffles) that only a register operand of wgmma needs.

    ``scale_at``: where the consumer reads the item's 64 scales from global memory: "end" (after the product, its
    latency exposed), "start" (issued before the product, so it overlaps it) or "none" (diagnostic: outputs
    unscaled, wrong)."""
    import jax.experimental.pallas.mosaic_gpu as plgpu

    P = len(ws)
    quant = ws[0].dtype in (jnp.int8, jnp.int4)
    phases = []
    for x, w in zip(xs, ws):
        K, N = w.shape[::-1] if quant else w.shape
        splits = {(K_, N_): s for K_, N_, s in shapes}.get((K, N), 1)
        tk = qtile_k if quant else TILE
        if K % (tk * splits):
            raise ValueError(f"{K=} must be a multiple of {tk} x {splits} splits")
        phases.append((K, N, splits, K // (tk * splits), (N // TILE) * splits))  # K, N, splits, tiles, items
    tmax = max(p[3] for p in phases)
    if stages < (2 if eager else tmax):  # without eager, an item waits for all its tiles before freeing any
        raise ValueError(f"{stages=} must be at least the tiles of an item ({tmax})")
    if consumers > 1 and (len({p[3] for p in phases}) > 1 or (stages % (consumers * tmax) and not widen)):
        raise ValueError(f"{consumers=} needs one tile count for every item and {stages=} a multiple of "
                         f"{consumers} x {tmax}")
    if compute and not (stream and xload):
        raise ValueError("stream=False and xload=False need compute=False (the product waits for both operands)")
    matvec = matvec and compute  # the stream alone is the same without products
    if matvec and not (quant and eager and not widen):
        raise ValueError("matvec needs quantized weights, eager release and compute, without widen")
    if direct and not widen:
        raise ValueError("direct needs widen (it is how the wideners store their tiles)")
    if widen and not (quant and eager and compute):
        raise ValueError(f"{widen=} needs quantized weights, eager release and compute")
    if widen and (stages % widen or wstages % widen or wstages < 2
                  or (consumers > 1 and wstages % (consumers * tmax))):
        raise ValueError(f"{widen=}: {stages=} and {wstages=} must be multiples of it (and of {consumers} x {tmax} "
                         "for several consumers)")
    if interpret and barriers:
        raise ValueError("Mosaic GPU's interpreter has no global semaphores: pass barriers=False to interpret")
    dtype = xs[0].dtype
    wdtype = ws[0].dtype
    tiled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    # a (64, 64) weight tile's rows are 64 x bits / 8 bytes: the swizzle spans one row
    wbits = {jnp.dtype(jnp.int8): 8, jnp.dtype(jnp.int4): 4}.get(jnp.dtype(wdtype), 16)
    tk = qtile_k if quant else TILE
    wtiled = (plgpu.TilingTransform((8, tk)), plgpu.SwizzleTransform(tk * wbits // 8)) if quant else tiled

    def narrow_regs(slot_ref):  # a quantized tile in registers, in the layout that widens into WGMMA's
        return plgpu.load(slot_ref, (), layout=plgpu.Layout.WGMMA_UPCAST_2X if wbits == 8 else
                          plgpu.Layout.WGMMA_UPCAST_4X)

    def widened_regs(a, first=False):
        """``narrow_regs``' tile widened to x's dtype in the WGMMA layout (wgmma's A operand); ``first``: widen in
        the load layout, then relayout (else relayout the narrow values, then widen)."""
        if first:
            return plgpu.layout_cast(a.astype(dtype), plgpu.Layout.WGMMA)
        return plgpu.layout_cast(a, plgpu.Layout.WGMMA).astype(dtype)

    def n_items(p, c):  # items of phase p that block c takes: c, c + grid, ...
        return (phases[p][4] - c + grid - 1) // grid

    def item_coords(p, it):
        splits, tiles = phases[p][2], phases[p][3]
        return (it // splits) * TILE, (it % splits) * (tiles * tk)  # n0, k0

    def entry(*refs):
        x_refs, w_refs = refs[:P], refs[P:2 * P]
        s_refs, o_refs = (refs[2 * P:3 * P], refs[3 * P:]) if quant else (None, refs[2 * P:])
        sem = pl.get_global(plgpu.SemaphoreType.REGULAR((2,)))

        def body(w_ring, x_buf, o_buf, landed, x_landed, consumed, *wide):
            b_ring, ready, freed = wide if widen else (None, None, None)
            c = lax.axis_index("c")
            wg = lax.axis_index("wg")
            producer = consumers + widen

            @pl.when(wg < consumers)
            def _consumer():
                me = wg  # this consumer takes the block's items u with u % consumers == me

                def xbar(buf, i):
                    return x_landed.at[(me * 2 + buf) * tmax + i]

                def load_x(p, j, buf):  # item j's x tiles into buffer buf
                    it = c + j * grid
                    _, k0 = item_coords(p, it)
                    for i in range(phases[p][3]):
                        plgpu.copy_gmem_to_smem(x_refs[p].at[:, pl.ds(k0 + i * tk, tk)], x_buf.at[me, buf, i],
                                                xbar(buf, i))

                t, u, v = jnp.int32(0), jnp.int32(0), jnp.int32(0)  # the block's tiles and items; this one's items
                for p in range(P):
                    tiles = phases[p][3]
                    if p > 0 and barriers:  # every block's phase p-1 is done (its stores landed)
                        with jax.named_scope(f"bar{p}"):
                            plgpu.wait_smem_to_gmem(0)
                            plgpu.semaphore_signal(sem.at[0], 1, memory_scope="gpu")
                            if wait:
                                plgpu.semaphore_wait(sem.at[0], p * grid * consumers, decrement=False,
                                                     memory_scope="gpu")
                    items = n_items(p, c)
                    j0 = lax.rem(me - lax.rem(u, consumers) + consumers, consumers)  # this consumer's first item
                    own = jnp.maximum(items - j0 + consumers - 1, 0) // consumers

                    @pl.when(jnp.logical_and(own > 0, xload and not (matvec and not interpret)))
                    def _():
                        load_x(p, j0, 0)

                    def item(m, carry, t_p=t):
                        v = carry  # items this consumer has taken before this one
                        j = j0 + m * consumers
                        t = t_p + j * tiles  # the item's first tile in the block's sequence
                        buf = lax.rem(m, 2)
                        ob = lax.rem(v, 2)

                        @pl.when(jnp.logical_and(m + 1 < own, xload and not (matvec and not interpret)))
                        def _():
                            load_x(p, j + consumers, 1 - buf)

                        it = c + j * grid
                        n0, _ = item_coords(p, it)
                        split = lax.rem(it, phases[p][2])

                        def item_scales():  # (64,) float32, the WGMMA accumulator's row layout
                            if interpret:
                                return s_refs[p][pl.ds(n0, TILE)]
                            return plgpu.load(s_refs[p].at[pl.ds(n0, TILE)], (),
                                              layout=plgpu.Layout.WGMMA.reduce(1), optimized=False)

                        sc = item_scales() if quant and compute and scale_at == "start" else None

                        def wait_tiles():
                            for i in range(tiles):
                                with jax.named_scope("w"):
                                    plgpu.barrier_wait(landed.at[lax.rem(t + i, stages)])
                                if xload:
                                    with jax.named_scope("x"):
                                        plgpu.barrier_wait(xbar(buf, i))

                        def release_tiles():
                            for i in range(tiles):
                                plgpu.barrier_arrive(consumed.at[lax.rem(t + i, stages)])

                        if not compute and not stream:
                            if xload:
                                for i in range(tiles):
                                    plgpu.barrier_wait(xbar(buf, i))
                            return v + 1
                        if not compute:
                            if eager:
                                for i in range(tiles):
                                    plgpu.barrier_wait(landed.at[lax.rem(t + i, stages)])
                                    if xload:
                                        plgpu.barrier_wait(xbar(buf, i))
                                    plgpu.barrier_arrive(consumed.at[lax.rem(t + i, stages)])
                            else:
                                wait_tiles()
                                release_tiles()
                            return v + 1
                        def tile_t(slot):  # the (N, K) tile, x's dtype
                            return w_ring[slot].astype(dtype) if quant else w_ring[slot].T

                        if matvec and not interpret:  # CUDA cores: elementwise products, one row sum an item
                            _, k0 = item_coords(p, it)
                            col = plgpu.Layout.WGMMA.reduce(0)
                            xrow = [plgpu.load(x_refs[p].at[0, pl.ds(k0 + i * tk, tk)], (), layout=col,
                                               optimized=False).astype(jnp.float32) for i in range(tiles)]
                            prods = None
                            for i in range(tiles):
                                slot = lax.rem(t + i, stages)
                                plgpu.barrier_wait(landed.at[slot])
                                q = plgpu.load(w_ring.at[slot], (), layout=plgpu.Layout.WGMMA, optimized=False)
                                plgpu.barrier_arrive(consumed.at[slot])
                                prod = q.astype(dtype).astype(jnp.float32) * lax.broadcast_in_dim(
                                    xrow[i], (TILE, tk), (1,))
                                prods = prod if prods is None else prods + prod
                            acc = lax.broadcast_in_dim(jnp.sum(prods, axis=1), (TILE, ROWS), (0,))
                        elif widen:  # tiles widened by the wideners into b_ring: A from shared memory
                            def bslot(i):
                                return lax.rem(t + i, wstages)

                            if interpret:
                                acc = jnp.zeros((TILE, ROWS), jnp.float32)
                                for i in range(tiles):
                                    plgpu.barrier_wait(ready.at[bslot(i)])
                                    plgpu.barrier_wait(xbar(buf, i))
                                    acc += jnp.dot(b_ring[bslot(i)], x_buf[me, buf, i].T,
                                                   preferred_element_type=jnp.float32)
                                    plgpu.barrier_arrive(freed.at[bslot(i)])
                            else:
                                def product(acc_ref):
                                    for i in range(tiles):
                                        plgpu.barrier_wait(ready.at[bslot(i)])
                                        plgpu.barrier_wait(xbar(buf, i))
                                        plgpu.wgmma(acc_ref, b_ring.at[bslot(i)], x_buf.at[me, buf, i].T)
                                        if i > 0:  # tile i-1's MMA has retired: free its slot
                                            plgpu.wgmma_wait(1)
                                            plgpu.barrier_arrive(freed.at[bslot(i - 1)])
                                    plgpu.wgmma_wait(0)
                                    plgpu.barrier_arrive(freed.at[bslot(tiles - 1)])
                                    return acc_ref[...]

                                acc = pl.run_scoped(product, plgpu.ACC((TILE, ROWS), jnp.float32))
                        elif interpret and eager:
                            acc = jnp.zeros((TILE, ROWS), jnp.float32)
                            for i in range(tiles):
                                slot = lax.rem(t + i, stages)
                                plgpu.barrier_wait(landed.at[slot])
                                plgpu.barrier_wait(xbar(buf, i))
                                acc += jnp.dot(tile_t(slot), x_buf[me, buf, i].T, preferred_element_type=jnp.float32)
                                plgpu.barrier_arrive(consumed.at[slot])
                        elif interpret:  # the interpreter: the same product as jnp dots
                            wait_tiles()
                            acc = jnp.zeros((TILE, ROWS), jnp.float32)
                            for i in range(tiles):
                                acc += jnp.dot(tile_t(lax.rem(t + i, stages)), x_buf[me, buf, i].T,
                                               preferred_element_type=jnp.float32)
                            release_tiles()
                        elif quant:  # the tile widened in registers is wgmma's A operand; its slot is free at once
                            def widened(i):  # tile i of the item in registers, x's dtype; its slot freed
                                slot = lax.rem(t + i, stages)
                                plgpu.barrier_wait(landed.at[slot])
                                a = narrow_regs(w_ring.at[slot])
                                plgpu.barrier_arrive(consumed.at[slot])
                                return widened_regs(a, cast_first)

                            def product(acc_ref):
                                a = widened(0)
                                for i in range(tiles):
                                    plgpu.barrier_wait(xbar(buf, i))
                                    plgpu.wgmma(acc_ref, a, x_buf.at[me, buf, i].T)
                                    if pipelined and i + 1 < tiles:  # widen the next tile while this MMA runs
                                        a = widened(i + 1)
                                    plgpu.wgmma_wait(0)
                                    if not pipelined and i + 1 < tiles:
                                        a = widened(i + 1)
                                return acc_ref[...]

                            acc = pl.run_scoped(product, plgpu.ACC((TILE, ROWS), jnp.float32))
                        else:
                            def product(acc_ref):
                                for i in range(tiles):
                                    slot = lax.rem(t + i, stages)
                                    plgpu.barrier_wait(landed.at[slot])
                                    plgpu.barrier_wait(xbar(buf, i))
                                    plgpu.wgmma(acc_ref, w_ring.at[slot].T, x_buf.at[me, buf, i].T)
                                    if eager and i > 0:  # tile i-1's MMA has retired: free its slot
                                        plgpu.wgmma_wait(1)
                                        plgpu.barrier_arrive(consumed.at[lax.rem(t + i - 1, stages)])
                                plgpu.wgmma_wait(0)
                                if eager:
                                    plgpu.barrier_arrive(consumed.at[lax.rem(t + tiles - 1, stages)])
                                else:
                                    release_tiles()
                                return acc_ref[...]

                            acc = pl.run_scoped(product, plgpu.ACC((TILE, ROWS), jnp.float32))
                        if quant and scale_at != "none":  # per-row scales of the item's 64 output columns
                            sc = item_scales() if sc is None else sc
                            acc = acc * lax.broadcast_in_dim(sc, (TILE, ROWS), (0,))
                        # the store of two items ago has read its buffer (stores complete in the background)
                        plgpu.wait_smem_to_gmem(1, wait_read_only=True)
                        o_buf.at[me, ob][...] = acc
                        plgpu.commit_smem()
                        plgpu.copy_smem_to_gmem(o_buf.at[me, ob], o_refs[p].at[split, pl.ds(n0, TILE)])
                        return v + 1

                    v = lax.fori_loop(0, own, item, v)
                    t, u = t + items * tiles, u + items
                plgpu.wait_smem_to_gmem(0)
                if barriers:  # leave the semaphore at zero for the next call: all blocks past the last wait first
                    plgpu.semaphore_signal(sem.at[1], 1, memory_scope="gpu")

                    @pl.when(jnp.logical_and(c == 0, me == 0))
                    def _():
                        plgpu.semaphore_wait(sem.at[1], grid * consumers, memory_scope="gpu")
                        plgpu.semaphore_wait(sem.at[0], (P - 1) * grid * consumers, memory_scope="gpu")

            if widen:
                @pl.when(jnp.logical_and(wg >= consumers, wg < producer))
                def _widener():
                    w = wg - consumers
                    total = sum(n_items(p, c) * phases[p][3] for p in range(P))  # the block's tiles

                    def tile(m, _):
                        t = w + m * widen
                        qs, bs = lax.rem(t, stages), lax.rem(t, wstages)
                        plgpu.barrier_wait(landed.at[qs])
                        a = w_ring[qs].astype(dtype) if interpret else narrow_regs(w_ring.at[qs])
                        plgpu.barrier_arrive(consumed.at[qs])
                        if not interpret:
                            a = a.astype(dtype) if direct else widened_regs(a)

                        @pl.when(t >= wstages)
                        def _():
                            plgpu.barrier_wait(freed.at[bs])

                        b_ring[bs] = a
                        plgpu.commit_smem()  # visible to wgmma (the async proxy)
                        plgpu.barrier_arrive(ready.at[bs])

                    count = jnp.maximum(total - w + widen - 1, 0) // widen  # this widener's tiles
                    lax.fori_loop(0, count, tile, None)

                    def drain(m, _):  # observe the consumers' frees of this widener's last slots too
                        @pl.when(m >= wstages // widen)
                        def _():
                            plgpu.barrier_wait(freed.at[lax.rem(w + m * widen, wstages)])
                    lax.fori_loop(count, count + wstages // widen, drain, None)

            @pl.when(jnp.logical_and(wg == producer, stream))
            def _producer():
                t = jnp.int32(0)
                for p in range(P):
                    tiles = phases[p][3]

                    def item(j, t):
                        n0, k0 = item_coords(p, c + j * grid)
                        for i in range(tiles):
                            slot = lax.rem(t + i, stages)

                            @pl.when(t + i >= stages)
                            def _():
                                with jax.named_scope("slot"):
                                    plgpu.barrier_wait(consumed.at[slot])

                            if inflight:
                                @pl.when(t + i >= inflight)
                                def _():
                                    plgpu.barrier_wait(landed.at[lax.rem(t + i - inflight, stages)])

                            src = (w_refs[p].at[pl.ds(n0, TILE), pl.ds(k0 + i * tk, tk)] if quant else
                                   w_refs[p].at[pl.ds(k0 + i * TILE, TILE), pl.ds(n0, TILE)])
                            plgpu.copy_gmem_to_smem(src, w_ring.at[slot], landed.at[slot])
                        return t + tiles

                    t = lax.fori_loop(0, n_items(p, c), item, t)

                if inflight:  # observe the last tiles' landed phases too
                    def landed_drain(u, _):
                        plgpu.barrier_wait(landed.at[lax.rem(u, stages)])
                    lax.fori_loop(jnp.maximum(t - inflight, 0), t, landed_drain, None)

                def drain(u, _):  # observe the last slots' consumed phases too
                    @pl.when(u >= stages)
                    def _():
                        plgpu.barrier_wait(consumed.at[lax.rem(u, stages)])
                lax.fori_loop(t, t + stages, drain, None)

        pl.run_scoped(
            body,
            plgpu.SMEM((stages, TILE, tk), wdtype, transforms=wtiled),
            plgpu.SMEM((consumers, 2, tmax, ROWS, tk), dtype, transforms=tiled),
            plgpu.SMEM((consumers, 2, TILE, ROWS), jnp.float32),
            plgpu.Barrier(num_barriers=stages),
            plgpu.Barrier(num_barriers=consumers * 2 * tmax),
            plgpu.Barrier(num_barriers=stages),
            *((plgpu.SMEM((wstages, TILE, tk), dtype, transforms=tiled), plgpu.Barrier(num_barriers=wstages),
               plgpu.Barrier(num_barriers=wstages)) if widen else ()),
            collective_axes="wg",
        )

    kw = {}
    if interpret:
        from pallas_kernels.flash_attention_mgpu import interpret_params
        kw["interpret"] = interpret_params()
    return plgpu.kernel(
        entry,
        out_type=tuple(jax.ShapeDtypeStruct((splits, N, ROWS), jnp.float32) for K, N, splits, _, _ in phases),
        grid=(grid,),
        grid_names=("c",),
        num_threads=consumers + widen + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True, **(
            {"profile_space": 512, "profile_dir": profile_dir} if profile_dir else {})),
        **kw,
    )(*xs, *ws, *(scales if quant else ()))


def quantized(ws, bits: int):
    """Per-output-channel symmetric int8 / int4 copies of (K, N) weights: ((N, K) ints, (N,) float32 scales)."""
    qmax = 127 if bits == 8 else 7
    out = []
    for w in ws:
        wt = w.astype(jnp.float32).T  # (N, K)
        s = jnp.maximum(jnp.abs(wt).max(axis=1), 1e-8) / qmax  # (N,)
        q = jnp.clip(jnp.round(wt / s[:, None]), -qmax, qmax).astype(jnp.int8 if bits == 8 else jnp.int4)
        out.append((q, s))
    return out


def inputs(blocks: int, shapes=SHAPES):
    """(ws, xs): ``blocks`` lists of gpt2-xl's four projection weights (or ``shapes``' (K, N); distinct per block,
    so the chain reads HBM, not L2) and one x (8, K) per phase with only row 0 nonzero (B = 1)."""
    key = jax.random.key(0)
    ws = [[(jax.random.normal(jax.random.fold_in(key, 10 * b + j), (K, N), jnp.float32) * 0.02).astype(jnp.bfloat16)
           for j, (K, N, _) in enumerate(shapes)] for b in range(blocks)]
    xs = [jax.random.normal(jax.random.fold_in(key, 1000 + j), (ROWS, K), jnp.bfloat16).at[1:].set(0)
          for j, (K, _, _) in enumerate(shapes)]
    return ws, xs


def mode_flags(mode: str) -> dict:
    """``--modes`` digits (barriers, compute[, xload, wait, eager, stream]; the last four default 1, 1, 0, 1) as
    ``skeleton`` keywords."""
    names = ("barriers", "compute", "xload", "wait", "eager", "stream")
    return dict(zip(names, (c == "1" for c in (mode + "1101"[len(mode) - 2:])[:6])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--stages", default="16,24")
    ap.add_argument("--grid", type=int, default=0, help="blocks of the kernel (default: the SM count)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--modes", default="11,01,10,00",
                    help="digits: barriers, compute[, xload, wait, eager, stream] (1 = on; xload, wait and stream "
                         "default on, eager off)")
    ap.add_argument("--consumers", default="1", help="consumer warpgroups a block, e.g. 1,2")
    ap.add_argument("--inflight", default="0", help="caps on the producer's copies in flight (0: the ring)")
    ap.add_argument("--quant", default="none", help="weight formats, e.g. none,int8,int4 (session 13)")
    ap.add_argument("--qtile-k", default="64", help="quantized tiles' depths, e.g. 64,128")
    ap.add_argument("--shapes", default="", help="phases as K:N:splits,... (default gpt2-xl's four projections)")
    ap.add_argument("--cast-first", default="0", help="int8: widen before the relayout (0,1)")
    ap.add_argument("--pipelined", default="0", help="quantized: widen the next tile during the MMA (0,1)")
    ap.add_argument("--widen", default="0", help="quantized: widening warpgroups, e.g. 0,1,2 (eager modes)")
    ap.add_argument("--direct", default="0", help="with --widen: store widened tiles in the load layout (0,1)")
    ap.add_argument("--wstages", type=int, default=6, help="slots of the widened ring (with --widen)")
    ap.add_argument("--matvec", default="0", help="quantized: CUDA-core products instead of wgmma (0,1; B = 1)")
    ap.add_argument("--scale-at", default="end", help="quantized: end,start,none (none: diagnostic, outputs wrong)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", default="", help="write one call's Mosaic GPU trace per mode here (no timing)")
    args = ap.parse_args(argv)
    if jax.default_backend() != "gpu":
        print("error: bench.block_skeleton_mgpu needs a GPU", file=sys.stderr)
        return 2
    grid = args.grid or jax.devices()[0].core_count
    if args.profile:
        import os
        ws, xs = inputs(1)
        for mode in args.modes.split(","):
            d = os.path.join(args.profile, f"m{mode}")
            os.makedirs(d, exist_ok=True)
            f = jax.jit(lambda xs, ws: skeleton(xs, ws[0], grid=grid, stages=int(args.stages.split(",")[0]),
                                                 profile_dir=d, **mode_flags(mode)))
            for _ in range(3):
                jax.block_until_ready(f(xs, ws))
            print(mode, os.listdir(d))
        return 0
    from jax.experimental.mosaic.gpu import profiler

    from pallas_kernels.matvec_mgpu import matvec_mgpu_reference
    shapes = tuple(tuple(map(int, p.split(":"))) for p in args.shapes.split(",")) if args.shapes else SHAPES
    ws_f, xs = inputs(args.blocks, shapes)
    quantized_blocks = {}  # bits -> every block's (ints, scales), made once per format
    rows = []
    for quant, qtk, cf, pp, wd, dr, mv, sa, stages, mode, inflight, consumers in (
            (q, tk, cf, pp, wd, dr, mv, sa, st, m, fl, cs) for q in args.quant.split(",")
            for wd in (map(int, args.widen.split(",")) if q != "none" else (0,))
            for dr in ((c == "1" for c in args.direct.split(",")) if wd else (False,))
            for mv in ((c == "1" for c in args.matvec.split(",")) if q != "none" else (False,))
            for sa in (args.scale_at.split(",") if q != "none" else ("end",))
            for pp in ((c == "1" for c in args.pipelined.split(",")) if q != "none" else (False,))
            for cf in ((c == "1" for c in args.cast_first.split(",")) if q == "int8" else (False,))
            for tk in (map(int, args.qtile_k.split(",")) if q != "none" else (TILE,))
            for st in map(int, args.stages.split(",")) for m in args.modes.split(",")
            for fl in map(int, args.inflight.split(",")) for cs in map(int, args.consumers.split(","))):
        bits = {"none": 16, "int8": 8, "int4": 4}[quant]
        if bits == 16:
            ws, ss, refs = ws_f, [None] * args.blocks, ws_f[-1]
        else:
            if bits not in quantized_blocks:
                quantized_blocks[bits] = [quantized(b, bits) for b in ws_f]
            qs = quantized_blocks[bits]
            ws, ss = [[q for q, _ in b] for b in qs], [[s for _, s in b] for b in qs]
            refs = [(q.astype(jnp.float32) * s[:, None]).T for q, s in qs[-1]]  # (K, N) dequantized
        wbytes = sum(w.size * bits // 8 for w in ws[0])
        flags = mode_flags(mode)
        tiles = max(K // (qtk * s) for K, _, s in shapes)
        if mv and wd:
            continue
        if wd:
            if stages % wd or args.wstages % wd or (consumers > 1 and args.wstages % (consumers * tiles)):
                continue
        elif stages < (2 if flags["eager"] else tiles) or (consumers > 1 and stages % (consumers * tiles)):
            continue
        kw = dict(flags, grid=grid, stages=stages, inflight=inflight, consumers=consumers, shapes=shapes,
                  **({"qtile_k": qtk, "cast_first": cf, "pipelined": pp, "widen": wd, "direct": dr, "wstages": args.wstages,
                      "matvec": mv, "scale_at": sa}
                     if bits < 16 else {}))
        f = jax.jit(lambda xs, ws, ss, kw=kw: [skeleton(xs, w, scales=s, **kw) for w, s in zip(ws, ss)])
        try:
            out = jax.block_until_ready(f(xs, ws, ss))
        except Exception as e:  # a lowering the toolchain refuses: one line, then the next configuration
            print(f"{quant} stages {stages} mode {mode} inflight {inflight}: FAILED {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:300] if str(e) else ''}", flush=True)
            continue
        errs = [float(jnp.abs(o.sum(0).T[:1] - matvec_mgpu_reference(x[:1], w)).max())
                for o, x, w in zip(out[-1], xs, refs)]
        _, times = profiler.measure(f, iterations=args.reps)(xs, ws, ss)
        per = [t * 1e3 / args.blocks for t in times]
        t0 = time.perf_counter()
        for _ in range(10):
            out = f(xs, ws, ss)
        jax.block_until_ready(out)
        wall = (time.perf_counter() - t0) / 10 / args.blocks * 1e6
        us = statistics.median(per)
        row = {"quant": quant, "qtile_k": qtk, "cast_first": cf, "pipelined": pp, "widen": wd, "direct": dr, "matvec": mv, "scale_at": sa,
               "wstages": args.wstages if wd else 0, "stages": stages, "mode": mode, **flags, "inflight": inflight, "consumers": consumers,
               "us_per_block": us, "min_us": min(per), "wall_us": wall, "gbps": wbytes / us / 1e3, "max_err": max(errs),
               "grid": grid}
        rows.append(row)
        print(f"{quant:4s} k{qtk:<3d}{' cf' if cf else ''}{' pipe' if pp else ''}{f' widen {wd}x{args.wstages}' if wd else ''}{' direct' if dr else ''}{' matvec' if mv else ''}{'' if sa == 'end' else ' scale@' + sa} stages {stages:2d} inflight {inflight:2d} consumers {consumers} barriers/compute/xload/wait/eager {mode:5s}: {us:6.2f} us/block (min {min(per):.2f}, wall "
              f"{wall:.2f}), {row['gbps']:.0f} GB/s of weights, max |err| {max(errs):.2g}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "shapes": shapes, "blocks": args.blocks,
                       "method": f"CUPTI device time of {args.blocks} block kernels / blocks, median of {args.reps}"},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
