"""The weight-only quantized formats: ``QWeight`` (a quantized (K, N) projection), ``QHead`` (the int8 LM head),
``quantize`` and ``dequantize``. Pure numpy / jnp: the XLA backend and checkpoint code use these without loading any
Pallas lowering; ``quant_matmul.py`` and the decode kernels read the same layouts.

Formats (``jaxgpt`` writes checkpoints in them):

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

BITS = (8, 4)
DEFAULT_GROUP = 128


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


def check_format(bits: int, group: int | None) -> None:
    if bits not in BITS:
        raise ValueError(f"{bits=} must be one of {BITS}")
    if bits == 4 and (group is None or group < 32 or group & (group - 1)):
        raise ValueError(f"int4 {group=} must be a power of two >= 32")
    if bits == 8 and group is not None:
        raise ValueError(f"int8 scales are per output channel: {group=} must be None")


def quantize(w, *, bits: int, group: int | None = None) -> QWeight:
    """Symmetric weight-only quantization of a (K, N) float weight (numpy or jax; computed in float32 numpy)."""
    group = (group or DEFAULT_GROUP) if bits == 4 else None
    check_format(bits, group)
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
