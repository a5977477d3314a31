"""Weight-only quantized matmul: ``act(x @ dequant(w) + b)`` reading int8 or packed int4 weights (Pallas, Triton).

The weights stay quantized in HBM; each tile is loaded as int8 (or unpacked from int4 bytes) and converted to the
activation dtype in registers before the MMA; the scales multiply the float32 dot products, never the weights, so
no dequantized copy of a weight exists anywhere. Decode-sized M (≤ 16) splits K over programs as the float matmul
does (``matmul_split_k``), the float32 partials summed by one XLA epilogue; larger M runs one program per output
tile with the bias and activation in registers.

Formats (this file owns them; ``jaxgpt.quantize`` writes checkpoints in them):

- int8, symmetric per output channel: ``q`` (K, N) int8 in [-127, 127], ``scale`` (1, N) float32; w = q · scale.
- int4, symmetric group-wise along K (group G, a power of two ≥ 32; 128 by default as in gpt-fast): K is padded
  with zero rows to Kp, a multiple of G; ``q`` (Kp/2, N) uint8, ``scale`` (Kp/G, N) float32; w = v · scale[group],
  v in [-8, 7]. Within group g, byte r (0 ≤ r < G/2) of column n holds row g·G + r in its low nibble and row
  g·G + G/2 + r in its high nibble, each stored as v + 8. Packing the two halves of a group (not neighbouring
  rows) lets a kernel unpack with one mask and one shift and feed each half to its own dot, no register shuffles.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import check_blocks, compiler_params, default_interpret, without_x_bias
from pallas_kernels.partials import ACTIVATIONS, SplitK, finish, gelu_tanh
from pallas_kernels.tuning import QuantMatmulConfig, lookup

BITS = (8, 4)
DEFAULT_GROUP = 128
DECODE_ROWS = 16  # M at or under this splits K over programs


@functools.partial(jax.tree_util.register_dataclass, data_fields=["q", "scale"], meta_fields=["bits", "group", "k"])
@dataclasses.dataclass(frozen=True)
class QWeight:
    """A quantized (K, N) weight in one of this file's formats: ``q``, ``scale`` are arrays (pytree leaves);
    ``bits`` (8 or 4), ``group`` (int4's group size; None for int8's per-channel scales) and ``k`` (the logical
    K, before int4's padding) are static."""

    q: jax.Array
    scale: jax.Array
    bits: int
    group: int | None
    k: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.k, self.q.shape[1]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.q.shape)) * self.q.dtype.itemsize + int(np.prod(self.scale.shape)) * 4


@functools.partial(jax.tree_util.register_dataclass, data_fields=["q", "scale"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class QHead:
    """The int8 LM head as the model holds it: wte's rows quantized, ``q`` (V, C) int8 in wte's own layout (a tile
    row is C contiguous bytes, so loads vectorise: the checkpoint's (C, V) copy has rows an odd V bytes apart) and
    ``scale`` (V,) float32, one per vocabulary entry; logits = (h @ q.T) · scale. ``head_from_copy`` builds it from
    the checkpoint's (C, V) ``QWeight`` format at load time."""

    q: jax.Array
    scale: jax.Array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)  # (V, C)


def head_from_copy(q, scale) -> QHead:
    """The checkpoint's int8 head copy, ``q`` (C, V) and ``scale`` (1, V), as a ``QHead`` (numpy, once at load)."""
    q, scale = np.asarray(q), np.asarray(scale, np.float32)
    if q.ndim != 2 or q.dtype != np.int8 or scale.shape != (1, q.shape[1]):
        raise ValueError(f"an int8 head copy is (C, V) int8 with (1, V) scales, got {q.shape} {q.dtype}, "
                         f"{scale.shape}")
    return QHead(np.ascontiguousarray(q.T), scale.reshape(-1))


def _check_format(bits: int, group: int | None) -> None:
    if bits not in BITS:
        raise ValueError(f"{bits=} must be one of {BITS}")
    if bits == 4 and (group is None or group < 32 or group & (group - 1)):
        raise ValueError(f"int4 {group=} must be a power of two >= 32")
    if bits == 8 and group is not None:
        raise ValueError(f"int8 scales are per output channel: {group=} must be None")


def quantize(w, *, bits: int, group: int | None = None) -> QWeight:
    """Symmetric weight-only quantization of a (K, N) float weight (numpy or jax; computed in float32 numpy)."""
    group = (group or DEFAULT_GROUP) if bits == 4 else None
    _check_format(bits, group)
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a (K, N) weight, got shape {w.shape}")
    K, N = w.shape
    if bits == 8:
        amax = np.abs(w).max(axis=0, keepdims=True)  # (1, N)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        return QWeight(q, scale, 8, None, K)
    kp = -(-K // group) * group
    wg = np.zeros((kp, N), np.float32)
    wg[:K] = w
    wg = wg.reshape(kp // group, group, N)  # (G, group, N)
    amax = np.abs(wg).max(axis=1)  # (G, N)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    v = np.clip(np.rint(wg / scale[:, None]), -8, 7).astype(np.int16) + 8  # (G, group, N) in [0, 15]
    h = group // 2
    q = (v[:, :h] | (v[:, h:] << 4)).astype(np.uint8).reshape(kp // 2, N)  # low nibble: first half of the group
    return QWeight(q, scale, 4, group, K)


def dequantize(w: QWeight, dtype=jnp.float32) -> jax.Array:
    """The (K, N) weight a ``QWeight`` stands for, in ``dtype`` (pure jnp: the reference's view of the format)."""
    if w.bits == 8:
        return (w.q.astype(jnp.float32) * w.scale).astype(dtype)
    p = w.q.astype(jnp.int32).reshape(-1, w.group // 2, w.q.shape[1])  # (G, group/2, N)
    v = jnp.concatenate([(p & 15) - 8, (p >> 4) - 8], axis=1).astype(jnp.float32)  # (G, group, N)
    return (v * w.scale[:, None]).reshape(-1, w.q.shape[1])[: w.k].astype(dtype)


def _validate(x_shape, w: QWeight, b_shape) -> None:
    _check_format(w.bits, w.group)
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


def _kernel(x_ref,  # (M, K) activations, or (S', M, K) float32 partials of the previous matmul
            xb_ref,  # (K,) the previous matmul's bias when x_ref holds partials, else None
            q_ref,  # int8 (K, N) or uint8 (Kp/2, N)
            s_ref,  # (1, N) or (Kp/G, N) float32 scales
            b_ref,  # (N,) bias
            o_ref,  # (S, M, N) float32 partials when ``split``, else the (M, N) output
            *, m: int, n: int, k: int, kq: int, bm: int, bn: int, bk: int, chunk: int, bits: int, activation: str,
            split: bool, x_act: str, cdt, precision):
    i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows = i * bm + jnp.arange(bm)
    cols = j * bn + jnp.arange(bn)
    rm, cm = rows < m, cols < n
    lo = s * chunk  # first K row of this program's chunk (a multiple of bk)

    def load_x(k0, width):  # (BM, width) in the compute dtype
        ks = k0 + jnp.arange(width)
        xm = rm[:, None] & (ks[None, :] < k)
        if xb_ref is None:
            return pltriton.load(x_ref.at[pl.ds(i * bm, bm), pl.ds(k0, width)], mask=xm, other=0.0)
        xs = jnp.zeros((bm, width), jnp.float32)  # finish the previous matmul on the fly: sum, bias, act, round
        for p in range(x_ref.shape[0]):
            xs += pltriton.load(x_ref.at[jnp.int32(p), pl.ds(i * bm, bm), pl.ds(k0, width)], mask=xm, other=0.0)
        xb = pltriton.load(xb_ref.at[pl.ds(k0, width)], mask=ks < k, other=0.0)
        return jnp.where(xm, finish(xs, xb[None, :], x_act, cdt), 0.0).astype(cdt)

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
    out, split = _call(x2, None, "none", x.dtype, w, b, activation, True, block_m, block_n, block_k, split_k,
                       num_warps, num_stages, interpret, out_dtype=out_dtype)
    if split:  # one fused XLA epilogue: sum the partials, bias, activation, round
        out = out.sum(0) + b.astype(jnp.float32)
        out = (gelu_tanh(out) if activation == "gelu_tanh" else out).astype(out_dtype)
    return out.reshape(*lead, N)


def _call(xs, xb, x_act, cdt, w: QWeight, b, activation, finish_here, block_m, block_n, block_k, split_k, num_warps,
          num_stages, interpret, out_dtype=None):
    """The pallas_call: (out, split?). ``xs`` is (M, K) or (S', M, K) partials (then ``xb``/``x_act`` finish
    them); ``finish_here=False`` always returns (S, M, N) float32 partials, even unsplit."""
    M, (K, N) = xs.shape[-2], w.shape
    bm, bn, bk, kq, chunk, split, warps, stages = _plan(M, N, K, w.bits, w.group, cdt, block_m, block_n, block_k,
                                                        split_k, num_warps, num_stages)
    partials = split > 1 or not finish_here
    precision = jax.lax.Precision.HIGHEST if jnp.dtype(cdt) == jnp.float32 else None
    kernel = functools.partial(_kernel, m=M, n=N, k=K, kq=kq, bm=bm, bn=bn, bk=bk, chunk=chunk, bits=w.bits,
                               activation=activation, split=partials, x_act=x_act, cdt=jnp.dtype(cdt),
                               precision=precision)
    args = (xs, xb, w.q, w.scale, b) if xb is not None else (xs, w.q, w.scale, b)
    if xb is None:
        kernel = without_x_bias(kernel)
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


@functools.partial(jax.jit, static_argnames=("activation", "block_n", "block_k", "split_k", "num_warps",
                                             "num_stages", "interpret"))
def quant_matmul_split_k(x: "jax.Array | SplitK", w: QWeight, b: jax.Array, *, activation: str = "none",
                         block_n: int | None = None, block_k: int | None = None, split_k: int | None = None,
                         num_warps: int | None = None, num_stages: int | None = None,
                         interpret: bool | None = None) -> SplitK:
    """Decode-sized ``act(x @ dequant(w) + b)`` left unfinished, as ``matmul_split_k`` does for float weights.

    x: (M, K) with M <= 16, or the ``SplitK`` of the previous matmul (finished on load). Returns ``SplitK``
    (S, M, N) float32 partials with the bias and activation still to apply: the next kernel of the decode step
    (LayerNorm, decode attention, the next matmul) finishes them, so no XLA epilogue kernel runs.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"{activation=} must be one of {ACTIVATIONS}")
    xs = x.parts if isinstance(x, SplitK) else x
    _validate(xs.shape, w, b.shape)
    if xs.ndim not in (2, 3) or xs.shape[-2] > DECODE_ROWS:
        raise ValueError(f"split-K is for decode-sized M <= {DECODE_ROWS}: x {tuple(xs.shape)}")
    xb, x_act, cdt = (x.bias, x.activation, x.dtype) if isinstance(x, SplitK) else (None, "none", xs.dtype)
    out, _ = _call(xs, xb, x_act, cdt, w, b, activation, False, 16, block_n, block_k, split_k, num_warps, num_stages,
                   interpret)
    return SplitK(out, b, activation, jnp.dtype(cdt))


def quant_matmul_reference(x, w: QWeight, b, *, activation: str = "none", out_dtype=None):
    """Dequantize, then the float32 matmul: what ``quant_matmul`` must equal up to accumulation order."""
    y = jnp.dot(x.astype(jnp.float32), dequantize(w), precision=jax.lax.Precision.HIGHEST) + b.astype(jnp.float32)
    if activation == "gelu_tanh":
        y = gelu_tanh(y)
    return y.astype(out_dtype or x.dtype)
