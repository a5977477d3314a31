"""A whole transformer block's decode step in one kernel: persistent programs and grid-wide barriers (Pallas, Triton).

A decode step reads every weight once for a handful of rows, and the per-op decode path spends ~8 kernels a block,
each paying a launch, a cold pipeline and a drain (~2-4 µs on the H100 whatever it reads). Here one kernel runs
the block's five phases on ``programs`` persistent programs (at most one per SM, so all are resident at once):

1. ``c_attn``: x = r + MLP-out of the previous block (finished from its split-K partials); every program computes
   LN1(x) (one pass for the statistics, the normalised rows into its own scratch row), then split-K partial
   products of LN1(x)·W_qkv over (N block, K split) work items.
2. attention: per (row, head, split of the live cache [0, pos)), finish q/k/v from the partials (+ bias), append
   k/v at slot ``pos``, online softmax over the split's slots (float32, base 2), write the split's output and
   log-sum-exp; the head's last split to finish (an atomic count) merges them into the rounded attention output
   (with one split a head, the split writes it directly: no count, no merge).
3. ``attn.c_proj``: partials of attention-out·W_o, K one head a step.
4. ``c_fc``: h1 = x + attn-out (finished from 3's partials), LN2(h1) per program as in 1, partials of LN2·W_fc.
5. ``mlp.c_proj``: each K step finishes c_fc's partials (bias + GELU) for its slice, partials of g·W_proj.

A barrier separates the phases: every program adds one to a counter with an acquire-release atomic, polls it with
volatile loads until all have, then reads it once more with an acquiring atomic (the cooperative-groups grid sync,
made of Triton atomics; that atomic's result must be used, or it may lower to a ``red``, which cannot acquire: the
H100 caught exactly that). Between its arrival and its wait a program loads a few sectors of its next matmul
item's weights (``DecodeLayerPlan.prefetch_rows``), or before attention its first split's first key/value slots, so
DRAM works while the programs wait. The block's outputs are h1 and the MLP's float32 partials: the next block's
phase 1 (or the final LayerNorm, ``add_layer_norm`` with ``SplitK``) finishes them, so no program waits for a sum it
does not need. Data one phase writes is read by the next with plain loads: no program reads a scratch buffer before
the phase that writes it (L1 starts each kernel empty, XLA's buffers do not share a 32-byte sector, and the cache
slots prefetched lie before ``pos``, which no phase writes), so no L1 line can be stale; the atomics order the writes
(release) before the reads (acquire). (jax 0.10.2's Triton lowering also rejects ``cache_modifier=".cg"``: it looks
the name up with the dot.)

Rounding follows the per-op path exactly: every matmul output is rounded to the compute dtype as a store would be,
residual sums are taken in float32 and rounded, LayerNorm statistics come from the float32 sum.

``fused=False`` runs the same phase code as five ``pallas_call``s (no barriers): the form interpret mode can run
(it runs programs one by one, so a barrier would wait forever) and a GPU baseline that isolates what the barriers
buy. ``decode_layer_reference`` is the pure-jnp step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import check_blocks, compiler_params, default_interpret, next_pow2
from pallas_kernels.decode_attention import LOG2E, _NEG, _attend_split
from pallas_kernels.partials import SplitK, finish, gelu_tanh
from pallas_kernels.quant_format import QWeight, dequantize

BM = 16  # rows of every tile: the decode rows padded to the smallest tensor-core tile
BARRIERS = 4  # per block: after phases 1-4


def counter_slots(batch: int, n_head: int) -> int:
    """int32 counters one block's step uses: its four barriers, and one per (row, head) whose attention splits' last
    finisher merges them. A step of L blocks takes ``L * counter_slots``, zero at its start."""
    return BARRIERS + batch * n_head


class LayerWeights(NamedTuple):
    """One block's parameters in HF GPT-2 layout: linear weights (in, out) in the compute dtype, or all four int8
    ``QWeight``s with per-output-channel scales; LayerNorm weights and biases in the compute dtype."""

    ln_1_w: jax.Array  # (C,)
    ln_1_b: jax.Array
    c_attn_w: jax.Array  # (C, 3C)
    c_attn_b: jax.Array  # (3C,)
    c_proj_w: jax.Array  # (C, C)
    c_proj_b: jax.Array
    ln_2_w: jax.Array
    ln_2_b: jax.Array
    c_fc_w: jax.Array  # (C, 4C)
    c_fc_b: jax.Array  # (4C,)
    mlp_proj_w: jax.Array  # (4C, C)
    mlp_proj_b: jax.Array  # (C,)


@dataclasses.dataclass(frozen=True)
class DecodeLayerPlan:
    """Work split of one block. Matmul phases: (block_n, block_k, split) — items are (N block, K split) pairs, dealt
    round-robin to the programs; the attention output projection steps K one head at a time (block_k = head_dim).
    Attention: the cache is cut into ``att_splits`` slices of whole ``att_block``-slot blocks."""

    programs: int
    qkv: tuple[int, int, int]
    proj: tuple[int, int]  # (block_n, split)
    fc: tuple[int, int, int]
    out: tuple[int, int, int]
    att_splits: int
    att_block: int = 64
    num_warps: int = 8  # H100, gpt2-xl B=1, first plan: 8 warps 80.7 µs a block, 4 warps 99.0
    num_stages: int = 4  # second plan: 4 stages 55.3 µs, 3 stages 60.7 (later runs: within noise)
    # K rows of each program's first item of a matmul phase to pull into L2 while DRAM would idle: issued (one
    # element a 32-byte sector) between a barrier's arrival and its wait, or before c_attn's LayerNorm prologue;
    # 0 = off. A power of two. H100, B=1, chain (2026-11-26): 64 rows, gpt2-xl 42.1 -> 41.5 µs a block, gpt2 27.4 ->
    # 26.1; 128 rows 43.7 / 28.0, 512 rows 59.1 / 30.9 (each program then waits for its prefetch before its first
    # tile). Before attention: the first ``att_block`` key and value slots of the program's first split.
    prefetch_rows: int = 64
    # (Choices measured against their alternatives and kept, H100 2026-11-26, docs/experiments/decode-block-kernel.md:
    # LayerNorm'd rows written once to a per-program scratch row, 52.6 -> 48.9 µs a gpt2-xl block; barriers polled
    # with volatile loads, then one acquiring atomic, within noise of atomic polls; attention split over the live
    # cache [0, pos), a head's last split merging the others, 45.5 -> 39.6 µs.)

    def __post_init__(self):
        if self.programs < 1:
            raise ValueError(f"programs={self.programs} must be >= 1")
        for name in ("qkv", "fc", "out"):
            bn, bk, s = getattr(self, name)
            check_blocks(**{f"{name}.block_n": bn, f"{name}.block_k": bk})
            if s < 1:
                raise ValueError(f"{name}.split={s} must be >= 1")
        check_blocks(**{"proj.block_n": self.proj[0], "att_block": self.att_block})
        if self.proj[1] < 1 or self.att_splits < 1:
            raise ValueError(f"proj split {self.proj[1]} and att_splits {self.att_splits} must be >= 1")
        if self.prefetch_rows < 0 or self.prefetch_rows & (self.prefetch_rows - 1):
            raise ValueError(f"prefetch_rows={self.prefetch_rows} must be 0 or a power of two")

    @staticmethod
    def heuristic(batch: int, n_embd: int, n_head: int, cache: int, programs: int,
                  itemsize: int = 2) -> "DecodeLayerPlan":
        # Measured on the H100 (bench.decode_layer, each phase alone, gpt2 and gpt2-xl at B=1): 128-wide N tiles
        # win every matmul phase, with 64-deep K steps where the LayerNorm prologue builds the activation tile
        # (c_attn, c_fc: 128-deep ones overflow shared memory there) and 128-deep in the MLP's output projection;
        # the fewest K splits that still give ~3/4 of the programs an item win (each partial is read again by the
        # next phase's prologue: gpt2-xl c_fc 20.1 µs with 2 splits, 25.1 with 3; the MLP output's partials, read
        # by the next block's prologue, at most 10: gpt2 takes 64x64 tiles there). gpt2-xl B=1: 49.6 µs a block
        # with these, 55.0 with the first plan. Attention: rows x heads x splits up to the programs, each split a
        # slice of the live cache (a head's last split merges them). float32 (4-byte) weights: 64-deep tiles
        # and 2 stages, or the pipeline overflows shared memory (255 KB asked for 128x128 tiles, 4 stages).
        # int8 weights take the same plan: K tiles twice as deep (as many bytes a tile as a float one's) and two
        # heads a c_proj step lost (2026-11-26: gpt2-xl block 48.0 µs against 41.2, decode 2.371 ms/token).
        c, d = n_embd, n_embd // n_head
        wide = itemsize <= 2
        att_block = 64
        splits = max(1, min(programs // max(batch * n_head, 1), -(-cache // att_block)))
        proj_bn, _, proj_split = _fewest_splits(c, c, programs, 64, d)  # K steps one head each
        return DecodeLayerPlan(
            programs=programs, qkv=_fewest_splits(3 * c, c, programs, 128, 64),
            proj=(proj_bn, proj_split), fc=_fewest_splits(4 * c, c, programs, 128, 64),
            out=next((t for bn, bk in (((128, 128), (64, 128)) if wide else ()) + ((64, 64),)
                      if (t := _fewest_splits(c, 4 * c, programs, bn, bk))[2] <= 10), (64, 64, 10)),
            att_splits=splits, att_block=att_block, num_stages=4 if wide else 2)


def _fewest_splits(n: int, k: int, programs: int, bn: int, bk: int) -> tuple[int, int, int]:
    """(bn, bk, split) with the fewest distinct K splits that give at least 3/4 of the programs an item."""
    nb, ks = -(-n // bn), -(-k // bk)
    for split in range(1, ks + 1):
        if -(-ks // -(-ks // split)) == split and nb * split >= 0.75 * programs:
            return bn, bk, split
    return bn, bk, ks


def default_programs() -> int:
    """One program per SM on a GPU (all must be resident together); 8 elsewhere (interpret mode)."""
    dev = jax.devices()[0]
    return int(getattr(dev, "core_count", 0) or 8) if dev.platform == "gpu" else 8


class _Refs(NamedTuple):
    r: object  # (B, C) the block's residual input
    mp: object  # (P0, B, C) f32 the previous block's MLP partials
    mpb: object  # (C,) their bias
    ln1w: object
    ln1b: object
    wqkv: object
    bqkv: object
    wo: object
    bo: object
    ln2w: object
    ln2b: object
    wfc: object
    bfc: object
    wp2: object
    bp2: object
    pos: object  # (B,) int32
    layer: object  # (1,) int32
    sqkv: object  # (3C,) f32 int8 per-channel scales of c_attn (None for float weights)
    so: object  # (C,)
    sfc: object  # (4C,)
    sp2: object  # (C,)
    # outputs
    h1: object  # (B, C) residual after attention
    mp_out: object  # (P5, B, C) f32 MLP partials
    kc: object  # (B, S, H, D) caches, updated in place at slot pos
    vc: object
    cnt: object  # (L * counter_slots,) int32 counters, zero at the step's start
    x: object  # (B, C) scratch: the block's input, rounded (phase 1 -> 4)
    qkv_p: object  # (P1, B, 3C) f32
    att_o: object  # (B, H, SP, D) f32
    att_l: object  # (B, H, SP, D) f32 log2-sum-exp, broadcast over D
    proj_p: object  # (P3, B, C) f32
    fc_p: object  # (P4, B, 4C) f32
    xn: object  # (G, B, C) scratch: each program's LayerNorm'd rows
    att_y: object  # (B, C) scratch: the attention output, heads merged from their splits, rounded
    sink: object  # (max(prefetch_rows, att_block), max(16, D)) f32: where prefetched values would go if one
    # exceeded 3e38 (never)


N_IN = 17  # inputs of a float-weight block; int8 weights add their four scale vectors
N_OUT = 14


@dataclasses.dataclass(frozen=True)
class _Dims:
    B: int
    C: int
    H: int
    D: int
    eps: float
    dtype: jnp.dtype
    precision: object
    fused: bool
    interpret: bool
    int8: bool  # the four projections' weights are int8 with per-output-channel scales


def _ld(ref, mask, *, other=0.0):  # plain loads: no L1 line can be stale (module docstring)
    return pltriton.load(ref, mask=mask, other=other)


def _tile_mask(c0, width: int, B: int, n: int, rows: int = BM):
    r, cols = jnp.arange(rows), c0 + jnp.arange(width)
    return (r[:, None] < B) & (cols[None, :] < n), cols


def _sum_parts(p_ref, c0, width: int, mask):
    """Σ_p p_ref[p, rows, c0:c0+width] as a float32 (rows, width) tile (rows = the mask's)."""
    acc = jnp.zeros(mask.shape, jnp.float32)
    for p in range(p_ref.shape[0]):
        acc += _ld(p_ref.at[jnp.int32(p), pl.ds(0, mask.shape[0]), pl.ds(c0, width)], mask)
    return acc


def _residual_chunk(base_ref, p_ref, pb_ref, c0, width: int, d: _Dims, rows: int = BM):
    """``base + round(Σ partials + bias)`` over columns [c0, c0+width) in float32, zero where masked (``p_ref``
    None: ``base`` alone)."""
    m, cols = _tile_mask(c0, width, d.B, d.C, rows)
    base = _ld(base_ref.at[pl.ds(0, rows), pl.ds(c0, width)], m).astype(jnp.float32)
    if p_ref is None:
        return jnp.where(m, base, 0.0), m
    y = finish(_sum_parts(p_ref, c0, width, m), _ld(pb_ref.at[pl.ds(c0, width)], cols < d.C)[None, :],
               "none", d.dtype).astype(jnp.float32)
    return jnp.where(m, base + y, 0.0), m


def _row_tile(d: _Dims) -> tuple[int, int]:
    """(rows, columns) of the tiles a program reads whole rows with: the batch's own row count (not the dot's 16)
    and about 2048 values a tile."""
    br = next_pow2(d.B)
    return br, min(next_pow2(d.C), max(128, 2048 // br))


def _row_stats(chunk, d: _Dims, store_ref):
    """Mean and 1/std of each row over C columns as (br,) vectors (``_row_tile``), and the first chunk's (x, mask);
    program 0 also stores the rows, rounded, to ``store_ref``. One pass: Σx and Σx² side by side, independent
    reductions (a shift by the first chunk's mean put one more reduction before them; dropping it measured no time
    on the H100, 2026-11-26, but is one reduction fewer). float32's E[x²] - E[x]² loses ~(1 + mean²/var) ulps of the
    variance: nothing for residual rows, whose mean is a fraction of their spread."""
    br, cb = _row_tile(d)
    first = pl.program_id(0) == 0
    x0, m0 = chunk(jnp.int32(0), cb, br)
    s = jnp.zeros((br,), jnp.float32)
    ss = jnp.zeros((br,), jnp.float32)
    for c0 in range(0, d.C, cb):  # (a traced start: the last chunk may overhang C, which the masks handle)
        x, m = (x0, m0) if c0 == 0 else chunk(jnp.int32(c0), cb, br)
        pltriton.store(store_ref.at[pl.ds(0, br), pl.ds(jnp.int32(c0), cb)], x.astype(store_ref.dtype),
                       mask=m & first)
        xs = jnp.where(m, x, 0.0)
        s += jnp.sum(xs, axis=1)
        ss += jnp.sum(xs * xs, axis=1)
    mean = s / d.C
    return mean, jax.lax.rsqrt(jnp.maximum(ss / d.C - mean * mean, 0.0) + d.eps), x0, m0  # (br,) x2


def _ln_tiles(chunk, d: _Dims, store_ref, w_ref, b_ref, xn_ref):
    """The LayerNorm'd activation tile function ``x_tile(k0, bk)`` of a phase whose rows ``chunk`` gives: this
    program's rows, normalised once into its own scratch row, then plain loads per K step."""
    br, cb = _row_tile(d)
    starts = list(map(jnp.int32, range(0, d.C, cb)))
    wb = [_ln_params(w_ref, b_ref, c0, cb, d) for c0 in starts]  # issued now: in flight during the statistics
    mean, rstd, x0, m0 = _row_stats(chunk, d, store_ref)  # (br,) each; the first (br, cb) chunk
    pid = pl.program_id(0)
    for c0, (w, b) in zip(starts, wb):
        x, m = (x0, m0) if d.C <= cb else chunk(c0, cb, br)  # rows that fit one tile: not loaded again
        pltriton.store(xn_ref.at[pid, pl.ds(0, br), pl.ds(c0, cb)], _normed(x, m, mean, rstd, w, b, d), mask=m)
    if not d.interpret:  # (the interpreter runs a program as one thread)
        pltriton.debug_barrier()  # the program's own stores, visible to all its threads

    def x_tile(k0, bk):
        m, _ = _tile_mask(k0, bk, d.B, d.C)
        return _ld(xn_ref.at[pid, pl.ds(0, BM), pl.ds(k0, bk)], m).astype(d.dtype)
    return x_tile


def _ln_params(w_ref, b_ref, k0, width: int, d: _Dims):
    """LayerNorm weight and bias over columns [k0, k0+width) as float32 (width,) vectors (zero past C)."""
    ok = k0 + jnp.arange(width) < d.C
    return (_ld(w_ref.at[pl.ds(k0, width)], ok).astype(jnp.float32),
            _ld(b_ref.at[pl.ds(k0, width)], ok).astype(jnp.float32))


def _normed(x, m, mean, rstd, w, b, d: _Dims):
    """LayerNorm of the (rows, width) tile x with its columns' weight w and bias b, rounded to the compute dtype."""
    y = (x - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]
    return jnp.where(m, y, 0.0).astype(d.dtype)


def _items(n_items: int, body):
    """Run ``body(item)`` for items pid, pid + G, pid + 2G, ... below ``n_items``."""
    pid, g = pl.program_id(0), pl.num_programs(0)

    def step(t, carry):
        body(pid + t * g)
        return carry

    jax.lax.fori_loop(0, jax.lax.div(jnp.maximum(n_items - pid + g - 1, 0), g), step, jnp.int32(0))


def _k_range(k: int, bk: int, split: int, s):
    """(start, steps) of K split s: whole ``bk`` blocks, the splits as even as whole blocks allow."""
    chunk = -(-(-(-k // bk)) // split) * bk  # K per split
    lo = s * chunk
    return lo, jax.lax.div(jnp.minimum(chunk, k - lo) + bk - 1, jnp.int32(bk))


def _item_range(it, k: int, bk: int, split: int):
    """Matmul item ``it``'s N block j, K split s, and that split's (start, steps) (``_k_range``)."""
    j, s = jax.lax.div(it, jnp.int32(split)), jax.lax.rem(it, jnp.int32(split))
    return (j, s, *_k_range(k, bk, split, s))


def _w_tile(w_ref, k0, bk: int, c0, bn: int, k: int, n: int, d: _Dims):
    """The (bk, bn) weight tile at rows [k0, k0+bk) below k, columns [c0, c0+bn) below n; zero elsewhere."""
    ks, cols = k0 + jnp.arange(bk), c0 + jnp.arange(bn)
    wm = (ks[:, None] < k) & (cols[None, :] < n)
    return pltriton.load(w_ref.at[pl.ds(k0, bk), pl.ds(c0, bn)], mask=wm, other=0 if d.int8 else 0.0)


def _prefetch(w_ref, n: int, k: int, plan: tuple[int, int, int], rows: int, interpret: bool):
    """Loads one element per 32-byte sector of the first ``rows`` K rows of this program's first item of a matmul
    phase (``_matmul_items``' items), so DRAM streams those sectors into L2 now; returns the loaded (rows, bn/e)
    tile, which stays in registers (in flight) until ``_sink``. (The interpreter has no strided loads: it reads the
    first bn/e columns instead; the values are never used.)"""
    bn, bk, split = plan
    it = pl.program_id(0)
    j, _, lo, steps = _item_range(it, k, bk, split)
    e = max(1, 32 // w_ref.dtype.itemsize)  # elements a sector
    ks, cols = lo + jnp.arange(rows), j * bn + e * jnp.arange(max(1, bn // e))
    m = (ks[:, None] < jnp.minimum(lo + steps * bk, k)) & (cols[None, :] < n) & (it < pl.cdiv(n, bn) * split)
    wide = pl.ds(j * bn, cols.shape[0], stride=None if interpret else e)
    return pltriton.load(w_ref.at[pl.ds(lo, rows), wide], mask=m,
                         other=0 if w_ref.dtype == jnp.int8 else 0.0)


def _sink(early, sink_ref, layer):
    """Consumes a prefetched tile (if any) without cost: a store to ``sink_ref`` where a value exceeds 3e38 (weights
    never do, but the compiler cannot know, so the loads stay)."""
    if early is None:
        return
    if isinstance(early, tuple):
        for e in early:
            _sink(e, sink_ref, layer)
        return
    v = early.astype(jnp.float32)  # (rows, w)
    hit = v > layer.astype(jnp.float32) + 3e38
    pltriton.store(sink_ref.at[pl.ds(0, v.shape[0]), pl.ds(0, v.shape[1])], v, mask=hit)


def _matmul_items(n: int, k: int, plan: tuple[int, int, int], x_tile, w_ref, out_ref, d: _Dims, s_ref=None):
    """Split-K partial products of x (rows, k) · w (k, n): item (j, s) writes out_ref[s, :, j-th N block].
    ``x_tile(k0, bk)`` gives the (BM, bk) activation tile of columns [k0, k0+bk) in the compute dtype. int8 weights
    (``d.int8``): tiles widened to the compute dtype in registers, the per-column scales ``s_ref`` applied to the
    partial (they factor out of the K sum)."""
    bn, bk, split = plan

    def dot(x, wt):
        return jnp.dot(x, wt.astype(d.dtype) if d.int8 else wt, preferred_element_type=jnp.float32,
                       precision=d.precision)

    def item(it):
        j, s, lo, steps = _item_range(it, k, bk, split)
        cols = j * bn + jnp.arange(bn)

        def step(kk, acc):
            k0 = lo + kk * bk
            return acc + dot(x_tile(k0, bk), _w_tile(w_ref, k0, bk, j * bn, bn, k, n, d))

        acc = jax.lax.fori_loop(0, steps, step, jnp.zeros((BM, bn), jnp.float32))
        if d.int8:
            acc = acc * _ld(s_ref.at[pl.ds(j * bn, bn)], cols < n)[None, :]
        m = (jnp.arange(BM)[:, None] < d.B) & (cols[None, :] < n)
        pltriton.store(out_ref.at[s, pl.ds(0, BM), pl.ds(j * bn, bn)], acc, mask=m)

    _items(-(-n // bn) * split, item)


def _phase_qkv(R: _Refs, plan: DecodeLayerPlan, d: _Dims, early=None):
    def chunk(c0, width, rows=BM):  # x = r + MLP-out of the previous block (float32, not yet rounded)
        return _residual_chunk(R.r, R.mp, R.mpb, c0, width, d, rows)

    x_tile = _ln_tiles(chunk, d, R.x, R.ln1w, R.ln1b, R.xn)
    _sink(early, R.sink, R.layer[0])
    _matmul_items(3 * d.C, d.C, plan.qkv, x_tile, R.wqkv, R.qkv_p, d, R.sqkv)


def _att_item(it, R: _Refs, plan: DecodeLayerPlan, d: _Dims):
    """Attention item ``it``'s row b, head h, cache split sp, the row's position, and the split's slots [lo, hi)
    (before pos only: the new token counts in split 0's carry)."""
    splits, bk = plan.att_splits, plan.att_block
    b = jax.lax.div(it, jnp.int32(d.H * splits))
    h = jax.lax.rem(jax.lax.div(it, jnp.int32(splits)), jnp.int32(d.H))
    sp = jax.lax.rem(it, jnp.int32(splits))
    pos = jnp.clip(R.pos[b], 0, R.kc.shape[1] - 1)  # (clamped here, not by an XLA kernel before the call)
    chunk = pl.cdiv(pl.cdiv(pos, jnp.int32(splits)), jnp.int32(bk)) * bk  # whole blocks, as even as they allow
    return b, h, sp, pos, sp * chunk, jnp.minimum(sp * chunk + chunk, pos)


def _prefetch_cache(R: _Refs, plan: DecodeLayerPlan, d: _Dims):
    """``_prefetch`` for the attention phase: one element a 32-byte sector of the first ``att_block`` key and value
    slots of this program's first attention item (they do not depend on c_attn, so DRAM can fetch them during the
    barrier before it). Returns the two loaded tiles."""
    it = pl.program_id(0)
    b, h, _, _, lo, hi = _att_item(jnp.minimum(it, d.B * d.H * plan.att_splits - 1), R, plan, d)
    e = max(1, 32 // R.kc.dtype.itemsize)
    w = max(1, d.D // e)
    m = ((lo + jnp.arange(plan.att_block) < hi) & (it < d.B * d.H * plan.att_splits))[:, None]
    m = m & (jnp.arange(w) < w)[None, :]  # (att_block, w): the slot mask broadcast over the tile's columns
    cols = pl.ds(0, w, stride=None if d.interpret else e)
    return tuple(pltriton.load(ref.at[b, pl.ds(lo, plan.att_block), h, cols], mask=m, other=0.0)
                 for ref in (R.kc, R.vc))


def _phase_attention(R: _Refs, plan: DecodeLayerPlan, d: _Dims, early=None):
    splits, bk = plan.att_splits, plan.att_block
    scale = 1.0 / math.sqrt(d.D)
    _sink(early, R.sink, R.layer[0])
    direct = splits == 1  # one split a head: its output is the head's, no merge

    def item(it):
        b, h, sp, pos, lo, hi = _att_item(it, R, plan, d)

        def finished(off):  # (D,) columns [off, off + D) of the QKV projection, finished and rounded
            acc = jnp.zeros((d.D,), jnp.float32)
            for p in range(R.qkv_p.shape[0]):
                acc += pltriton.load(R.qkv_p.at[jnp.int32(p), b, pl.ds(off, d.D)])
            return finish(acc, pltriton.load(R.bqkv.at[pl.ds(off, d.D)]), "none", d.dtype)

        q = finished(h * d.D).astype(jnp.float32) * (scale * LOG2E)  # (D,)
        k_new, v_new = finished(d.C + h * d.D), finished(2 * d.C + h * d.D)  # (D,) each
        first = sp == 0
        pltriton.store(R.kc.at[b, pos, h, :], k_new.astype(R.kc.dtype), mask=jnp.broadcast_to(first, (d.D,)))
        pltriton.store(R.vc.at[b, pos, h, :], v_new.astype(R.vc.dtype), mask=jnp.broadcast_to(first, (d.D,)))
        s_new = jnp.sum(q * k_new.astype(jnp.float32))
        is_first = first.astype(jnp.float32)
        carry = (v_new.astype(jnp.float32) * is_first, jnp.where(first, s_new, jnp.full_like(s_new, _NEG)),
                 is_first)
        # no program reads the slot written here
        out, _ = _attend_split(q, R.kc, R.vc, None if direct else R.att_o, R.att_l, carry, b=b, h=h, sp=sp, lo=lo,
                               hi=hi, bk=bk)
        if direct:
            pltriton.store(R.att_y.at[b, pl.ds(h * d.D, d.D)], out.astype(d.dtype))
        else:
            done = _count(R.cnt, _slots(R, d) + BARRIERS + b * d.H + h, d)
            pl.when(done == splits - 1)(lambda: _merge_head(R, b, h, splits, d))

    _items(d.B * d.H * splits, item)


def _slots(R: _Refs, d: _Dims):
    """This block's first counter: barriers at +0..3, head merges at +BARRIERS + b*H + h."""
    return R.layer[0] * counter_slots(d.B, d.H)


def _count(cnt_ref, slot, d: _Dims):
    """Add one to counter ``slot`` once every thread of this program has stored what the count announces, returning
    its value before: an acquire-release atomic on the GPU (so the last to count sees every write the others made
    before counting); a load and a store in interpret mode, which runs the programs one at a time (and has no
    state-discharge rule for an atomic inside a loop of traced length)."""
    if d.interpret:
        old = cnt_ref[slot]
        cnt_ref[slot] = old + 1
        return old
    pltriton.debug_barrier()  # every thread's stores done before the count is seen
    return pltriton.atomic_add(cnt_ref, (slot,), jnp.int32(1))


def _merge_splits(o, lse):
    """Softmax-weighted sum of the splits' outputs o (SP, D) by their log2-sum-exps lse (SP, D); float32 (D,)."""
    mx = jnp.max(lse, axis=0)  # (D,)
    w = jnp.exp2(lse - mx[None, :])  # (SP, D)
    return jnp.sum(o * w, axis=0) / jnp.sum(w, axis=0)


def _merge_head(R: _Refs, b, h, splits: int, d: _Dims):
    """Row b, head h: its splits merged, rounded to the compute dtype, into the attention output att_y."""
    sp = jnp.arange(next_pow2(splits))
    ok = jnp.broadcast_to((sp < splits)[:, None], (sp.shape[0], d.D))
    o = _ld(R.att_o.at[b, h, pl.ds(0, sp.shape[0]), :], ok)  # (SP, D)
    lse = jnp.where(ok, _ld(R.att_l.at[b, h, pl.ds(0, sp.shape[0]), :], ok), _NEG)
    pltriton.store(R.att_y.at[b, pl.ds(h * d.D, d.D)], _merge_splits(o, lse).astype(d.dtype))


def _phase_proj(R: _Refs, plan: DecodeLayerPlan, d: _Dims, early=None):
    def x_tile(k0, bk):  # the attention output, heads merged by phase 2, rounded
        return _ld(R.att_y.at[pl.ds(0, BM), pl.ds(k0, bk)], _tile_mask(k0, bk, d.B, d.C)[0]).astype(d.dtype)

    bn, split = plan.proj
    _sink(early, R.sink, R.layer[0])
    _matmul_items(d.C, d.C, (bn, d.D, split), x_tile, R.wo, R.proj_p, d, R.so)


def _phase_fc(R: _Refs, plan: DecodeLayerPlan, d: _Dims, early=None):
    def chunk(c0, width, rows=BM):  # h1 = x + attention out (float32, not yet rounded)
        return _residual_chunk(R.x, R.proj_p, R.bo, c0, width, d, rows)

    x_tile = _ln_tiles(chunk, d, R.h1, R.ln2w, R.ln2b, R.xn)
    _sink(early, R.sink, R.layer[0])
    _matmul_items(4 * d.C, d.C, plan.fc, x_tile, R.wfc, R.fc_p, d, R.sfc)


def _phase_out(R: _Refs, plan: DecodeLayerPlan, d: _Dims, early=None):
    def x_tile(k0, bk):  # GELU(c_fc) over columns [k0, k0+bk), finished from its partials
        m, cols = _tile_mask(k0, bk, d.B, 4 * d.C)
        g = finish(_sum_parts(R.fc_p, k0, bk, m),
                   _ld(R.bfc.at[pl.ds(k0, bk)], cols < 4 * d.C)[None, :], "gelu_tanh", d.dtype)
        return jnp.where(m, g, 0.0).astype(d.dtype)

    _sink(early, R.sink, R.layer[0])
    _matmul_items(d.C, 4 * d.C, plan.out, x_tile, R.wp2, R.mp_out, d, R.sp2)


PHASES = (_phase_qkv, _phase_attention, _phase_proj, _phase_fc, _phase_out)


def _barrier(cnt_ref, slot, during=None):
    """Every program arrives (acquire-release atomic, GPU scope) and waits until all have: it polls with volatile
    loads, then reads once with an acquiring atomic. ``during()``, if given, runs between arrival and wait (loads
    issued there are in flight while the program waits); its result is returned."""
    pltriton.debug_barrier()  # this program's stores are done before its arrival is seen
    g = pl.num_programs(0)
    arrived = pltriton.atomic_add(cnt_ref, (slot,), jnp.int32(1)) + 1
    early = during() if during is not None else None
    poll = lambda v: pltriton.atomic_add(cnt_ref, (slot,), jnp.int32(0))  # noqa: E731 - an acquiring read
    jax.lax.while_loop(lambda v: v < g, lambda v: pltriton.load(cnt_ref.at[slot], volatile=True), arrived)
    arrived = poll(arrived)  # acquire what the others wrote before arriving (its value is used below: an atomic
    # whose result is unused may become a `red`, which cannot acquire)
    jax.lax.while_loop(lambda v: v < g, poll, arrived)
    pltriton.debug_barrier()
    return early


def _layer_kernel(*refs, phases: tuple[int, ...], plan: DecodeLayerPlan, dims: _Dims, first: bool):
    n_scales = 4 if dims.int8 else 0  # (float weights: no scale inputs at all)
    R = _Refs(*refs[:N_IN + n_scales], *[None] * (4 - n_scales), *refs[-N_OUT:])
    if first:  # no previous block: its partials' slots hold placeholders, never read
        R = R._replace(mp=None, mpb=None)
    D = dims.D
    ahead = {0: (R.wqkv, 3 * dims.C, dims.C, plan.qkv), 2: (R.wo, dims.C, dims.C, (plan.proj[0], D, plan.proj[1])),
             3: (R.wfc, 4 * dims.C, dims.C, plan.fc), 4: (R.wp2, dims.C, 4 * dims.C, plan.out)}

    def fetch(p):  # what a program loads ahead of phase p (during the barrier before it)
        if p == 1:
            return _prefetch_cache(R, plan, dims)
        return _prefetch(*ahead[p], plan.prefetch_rows, dims.interpret)

    for p in range(len(PHASES)):
        during = None
        if plan.prefetch_rows and p in phases:
            during = functools.partial(fetch, p)
        if dims.fused and p:
            early = _barrier(R.cnt, _slots(R, dims) + p - 1, during=during)
        else:
            early = during() if during else None
        if p in phases:
            PHASES[p](R, plan, dims, early)


@functools.partial(jax.jit, static_argnames=("eps", "n_head", "plan", "fused", "interpret", "phases"))
def decode_layer(r: jax.Array, mlp_in: SplitK | None, w: LayerWeights, k_cache: jax.Array, v_cache: jax.Array,
                 pos: jax.Array, counters: jax.Array, layer: jax.Array, *, eps: float, n_head: int,
                 plan: DecodeLayerPlan | None = None, fused: bool | None = None, interpret: bool | None = None,
                 phases: tuple[int, ...] | None = None):
    """One decode step of a block: r (B, C) and the previous block's MLP partials ``mlp_in`` (``SplitK`` (P, B, C);
    None for the first block, whose input is r alone) in, ``(h1, mlp_out, k_cache, v_cache, counters)`` out.

    ``x = r + finish(mlp_in)`` is the block's input; ``h1 = x + attn(LN1(x))`` and ``mlp_out`` the MLP's unfinished
    partials of ``LN2(h1)``, so the block's output is ``h1 + finish(mlp_out)``. Row b's key and value go to cache slot
    ``pos[b]`` and its query attends to slots ``0..pos[b]``; the caches are updated in place (aliased). ``counters``
    (n_layer * counter_slots(B, n_head),) int32, zero at the step's start, is shared by the step's blocks; ``layer``
    (1,) int32 picks this block's slots. ``fused`` (default: on a GPU) runs one kernel with barriers, else five calls.
    ``phases`` (for benchmarks only: the outputs are then incomplete) runs a subset of the phases 0-4; the
    one-kernel form keeps all its barriers.
    """
    B, C = r.shape
    if C % n_head or (C // n_head) & (C // n_head - 1) or C // n_head < 16:
        raise ValueError(f"n_embd {C} / n_head {n_head} must be a power-of-two head_dim >= 16")
    H, D = n_head, C // n_head
    if B > BM:
        raise ValueError(f"decode_layer takes at most {BM} rows, got {B=}")
    if k_cache.ndim != 4 or k_cache.shape != v_cache.shape or k_cache.shape[0] != B or k_cache.shape[2:] != (H, D):
        raise ValueError(f"caches {k_cache.shape}, {v_cache.shape} must be (B, S, H, D) = ({B}, S, {H}, {D})")
    expect = {"c_attn_w": (C, 3 * C), "c_proj_w": (C, C), "c_fc_w": (C, 4 * C), "mlp_proj_w": (4 * C, C)}
    for name, shape in expect.items():
        if getattr(w, name).shape != shape:
            raise ValueError(f"{name} {getattr(w, name).shape} must be {shape} for n_embd {C}")
    mats = [getattr(w, name) for name in expect]
    int8 = isinstance(mats[0], QWeight)
    if any(isinstance(m, QWeight) != int8 or (int8 and (m.bits, m.group) != (8, None)) for m in mats):
        raise ValueError("the block kernel takes float weights or int8 per-channel ones (all four projections alike), "
                         f"got {[(m.bits, m.group) if isinstance(m, QWeight) else m.dtype for m in mats]}")
    scales = [m.scale.reshape(-1).astype(jnp.float32) for m in mats] if int8 else []
    if int8:
        w = w._replace(**{name: m.q for name, m in zip(expect, mats)})
    if mlp_in is not None and (mlp_in.parts.ndim != 3 or mlp_in.parts.shape[1:] != (B, C)):
        raise ValueError(f"mlp_in partials {mlp_in.parts.shape} must be (P, {B}, {C})")
    if pos.shape != (B,):
        raise ValueError(f"{pos.shape=} must be ({B},)")
    if counters.ndim != 1 or counters.shape[0] % counter_slots(B, H) or not counters.shape[0]:
        raise ValueError(f"{counters.shape=} must be (n_layer * counter_slots(B, n_head),) = (n_layer * "
                         f"{counter_slots(B, H)},)")
    interpret = default_interpret(interpret)
    fused = (not interpret) if fused is None else fused
    if fused and interpret:
        raise ValueError("fused=True needs every program resident at once (a GPU); interpret mode runs them "
                         "one at a time, so use fused=False there")
    S = k_cache.shape[1]
    if fused and plan is not None and jax.default_backend() == "gpu" and plan.programs > default_programs():
        raise ValueError(f"plan.programs={plan.programs} exceeds the {default_programs()} SMs: the one-kernel form "
                         f"needs every program resident at once (its barriers would wait forever)")
    plan = plan or DecodeLayerPlan.heuristic(B, C, H, S, default_programs(),
                                             jnp.dtype(r.dtype if int8 else w.c_attn_w.dtype).itemsize)
    dtype = r.dtype
    dims = _Dims(B, C, H, D, float(eps), jnp.dtype(dtype),
                 jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None, fused, interpret, int8)
    f32 = jnp.float32
    out_shape = [
        jax.ShapeDtypeStruct((B, C), dtype),  # h1
        jax.ShapeDtypeStruct((plan.out[2], B, C), f32),  # mlp partials
        jax.ShapeDtypeStruct(k_cache.shape, k_cache.dtype),
        jax.ShapeDtypeStruct(v_cache.shape, v_cache.dtype),
        jax.ShapeDtypeStruct(counters.shape, jnp.int32),
        jax.ShapeDtypeStruct((B, C), dtype),  # x
        jax.ShapeDtypeStruct((plan.qkv[2], B, 3 * C), f32),
        jax.ShapeDtypeStruct((B, H, plan.att_splits, D), f32),
        jax.ShapeDtypeStruct((B, H, plan.att_splits, D), f32),
        jax.ShapeDtypeStruct((plan.proj[1], B, C), f32),
        jax.ShapeDtypeStruct((plan.fc[2], B, 4 * C), f32),
        jax.ShapeDtypeStruct((plan.programs, B, C), dtype),  # xn
        jax.ShapeDtypeStruct((B, C), dtype),  # att_y
        jax.ShapeDtypeStruct((max(plan.prefetch_rows, plan.att_block), max(16, D)), f32),  # sink
    ]
    parts_in = (r, r) if mlp_in is None else (mlp_in.parts.astype(f32), mlp_in.bias)  # (placeholders: unread)
    ins = (r, *parts_in, *w, pos.astype(jnp.int32),
           layer.astype(jnp.int32).reshape(1), *scales)
    n_in = len(ins)  # N_IN, + 4 scales for int8 weights
    params = compiler_params(plan.num_warps, plan.num_stages)

    def call(phases, state, aliases):
        kernel = functools.partial(_layer_kernel, phases=phases, plan=plan, dims=dims, first=mlp_in is None)
        args = (*ins, *state)
        return pl.pallas_call(
            kernel, out_shape=out_shape, grid=(plan.programs,), in_specs=[pl.no_block_spec] * len(args),
            out_specs=[pl.no_block_spec] * N_OUT, input_output_aliases=aliases, compiler_params=params,
            interpret=interpret, name="jaxgpt_decode_layer" if fused else f"jaxgpt_decode_layer_p{phases[0] + 1}",
        )(*args)

    phases = tuple(range(len(PHASES))) if phases is None else tuple(phases)
    if fused:  # caches and counters in place; the rest are fresh buffers each phase fills before the next reads
        outs = call(phases, (k_cache, v_cache, counters), {n_in: 2, n_in + 1: 3, n_in + 2: 4})
    else:  # every output threads through the five calls; NaN until written, so a read before a write shows
        outs = [jnp.full(s.shape, jnp.nan if jnp.issubdtype(s.dtype, jnp.floating) else 0, s.dtype)
                for s in out_shape]
        outs[2], outs[3], outs[4] = k_cache, v_cache, counters
        for p in phases:
            outs = call((p,), outs, {n_in + i: i for i in range(N_OUT)})
    h1, mp, kc, vc, cnt = outs[:5]
    return h1, SplitK(mp, w.mlp_proj_b, "none", jnp.dtype(dtype)), kc, vc, cnt


def decode_layer_reference(r, mlp_in: SplitK | None, w: LayerWeights, k_cache, v_cache, pos, *, eps: float,
                           n_head: int):
    """Pure jnp, float32 math with the kernel's rounding points: returns (h1, block output, k_cache, v_cache)."""
    f32, dtype = jnp.float32, r.dtype
    B, C = r.shape
    H, D = n_head, C // n_head

    def rnd(v):
        return v.astype(dtype).astype(f32)

    def ln(v, g, b):
        mu = v.mean(-1, keepdims=True)
        var = jnp.square(v - mu).mean(-1, keepdims=True)
        return rnd((v - mu) * jax.lax.rsqrt(var + eps) * g.astype(f32) + b.astype(f32))

    def mm(a, wt, b):  # int8 weights as the float32 values they stand for
        wt = dequantize(wt, f32) if isinstance(wt, QWeight) else wt.astype(f32)
        return jnp.dot(a, wt, precision=jax.lax.Precision.HIGHEST) + b.astype(f32)

    x_f = r.astype(f32)
    if mlp_in is not None:
        x_f = x_f + rnd(mlp_in.parts.astype(f32).sum(0) + mlp_in.bias.astype(f32))
    x = rnd(x_f)
    qkv = rnd(mm(ln(x_f, w.ln_1_w, w.ln_1_b), w.c_attn_w, w.c_attn_b)).reshape(B, 3, H, D)
    rows = jnp.arange(B)
    k_cache = k_cache.at[rows, pos].set(qkv[:, 1].astype(k_cache.dtype))
    v_cache = v_cache.at[rows, pos].set(qkv[:, 2].astype(v_cache.dtype))
    S = k_cache.shape[1]
    s = jnp.einsum("bhd,bshd->bhs", qkv[:, 0], k_cache.astype(f32), precision=jax.lax.Precision.HIGHEST)
    s = jnp.where(jnp.arange(S)[None, None, :] <= pos[:, None, None], s / math.sqrt(D), -jnp.inf)
    y = rnd(jnp.einsum("bhs,bshd->bhd", jax.nn.softmax(s, axis=-1), v_cache.astype(f32),
                       precision=jax.lax.Precision.HIGHEST)).reshape(B, C)
    h1_f = x + rnd(mm(y, w.c_proj_w, w.c_proj_b))
    g = rnd(gelu_tanh(mm(ln(h1_f, w.ln_2_w, w.ln_2_b), w.c_fc_w, w.c_fc_b)))
    h1 = rnd(h1_f)
    out = h1 + rnd(mm(g, w.mlp_proj_w, w.mlp_proj_b))
    return h1.astype(dtype), out.astype(dtype), k_cache, v_cache
