"""Block-size configs per kernel: a frozen dataclass each, a commented heuristic, and a per-GPU table of winners.

``lookup(Config, **shape)`` returns the tuned config for this GPU and shape from ``tuning_tables/<gpu>.json`` when
there is one, else the heuristic. ``python -m pallas_kernels.autotune`` measures the candidates of each shape in
device time on the GPU at hand and rewrites that table. Shapes are keyed with rows rounded up to a power of two, so
one entry serves a bucket of sizes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp

TABLES = Path(__file__).parent / "tuning_tables"


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class LayerNormConfig:
    block_rows: int = 1
    num_warps: int = 4

    def __post_init__(self):
        if self.block_rows < 1 or self.block_rows & (self.block_rows - 1):
            raise ValueError(f"{self.block_rows=} must be a power of two")

    @staticmethod
    def heuristic(rows: int, cols: int, dtype) -> "LayerNormConfig":
        # Probe on the H100 (KERNELS.md §3): 1-2 rows a program with about 16 fp32 values a thread ran at
        # 2.65-2.75 TB/s; 64-row blocks fell to 146 GB/s. So: one row, warps = padded width / 512, clamped to 1..8.
        return LayerNormConfig(block_rows=1, num_warps=max(1, min(8, _pow2(cols) // 512)))

    @staticmethod
    def candidates(rows: int, cols: int, dtype):
        return [LayerNormConfig(br, nw) for br, nw in ((1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 8))]


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    block_m: int = 64
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1  # > 1: programs also split K and write float32 partials that a jnp epilogue sums

    @staticmethod
    def heuristic(m: int, n: int, k: int, dtype) -> "MatmulConfig":
        # Small M (decode): the weight read is all the work, and N/bn programs alone leave most of the 132 SMs
        # idle (gpt2's c_proj: 6 programs of 128 columns). Narrow N tiles and a split K give ~2 programs per SM.
        if m <= 16:
            bn, bk = 64, 128
            n_blocks, k_blocks = -(-n // bn), -(-k // bk)
            split = max(1, min(k_blocks, -(-264 // n_blocks)))
            return MatmulConfig(16, bn, bk, 4, 3, split)
        if m <= 64:
            return MatmulConfig(64, 64, 64, 4, 3)
        # Large M: 128x128 tiles with 64-deep K, 8 warps, 3 stages (Triton's usual Hopper choice for bf16).
        return MatmulConfig(128, 128, 64, 8, 3)

    @staticmethod
    def candidates(m: int, n: int, k: int, dtype):
        if m <= 16:  # decode: the programs that stream the weight — tile width, K step, K split, pipeline depth
            return _decode_candidates(MatmulConfig, n, k, jnp.dtype(dtype).itemsize, (64, 128, 256))
        tiles = [(128, 128), (128, 256), (64, 128)] if m > 64 else [(16, 64), (16, 128), (32, 64)]
        return [MatmulConfig(bm, bn, 64, nw, 3) for bm, bn in tiles for nw in (4, 8)
                if not (bm * bn >= 128 * 256 and nw == 4)]


def _decode_candidates(cls, n: int, k: int, w_bytes: float, block_ks) -> list:
    """Decode-sized (M <= 16) split-K configs: every (block_n, block_k, split, stages) whose pipeline fits in
    ~200 KB of shared memory and that launches between 32 and ~1100 programs (too few cannot pull HBM's bandwidth,
    too many pay launch waves)."""
    out = []
    for bn in (64, 128, 256):
        for bk in block_ks:
            k_blocks = -(-k // bk)
            for split in (1, 2, 3, 4, 6, 8, 12):
                programs = -(-n // bn) * split
                if split > k_blocks or not 32 <= programs <= 1100:
                    continue
                for stages in (2, 3, 4):
                    if stages * (bk * bn * w_bytes + 16 * bk * 2) > 200 * 1024:
                        continue
                    for warps in ((4, 8) if bn * bk >= 256 * 128 else (4,)):
                        out.append(cls(16, bn, bk, warps, stages, split))
    return out


@dataclasses.dataclass(frozen=True)
class QuantMatmulConfig:
    """The int8/int4 weight-only matmul (``quant_matmul``); ``block_k`` is int4's group size there."""
    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1

    @staticmethod
    def heuristic(m: int, n: int, k: int, bits: int, dtype) -> "QuantMatmulConfig":
        # Decode (M <= 16): as the float split-K matmul, ~264 programs (2 per SM) of 64-column tiles.
        if m <= 16:
            n_blocks, k_blocks = -(-n // 64), -(-k // 128)
            return QuantMatmulConfig(16, 64, 128, 4, 3, max(1, min(k_blocks, round(264 / n_blocks))))
        return QuantMatmulConfig(64, 128, 128, 4, 3, 1)

    @staticmethod
    def candidates(m: int, n: int, k: int, bits: int, dtype):
        if m <= 16:
            return _decode_candidates(QuantMatmulConfig, n, k, bits / 8, (128,) if bits == 4 else (128, 256))
        return [QuantMatmulConfig(bm, bn, 128, nw, 3, 1) for bm, bn in ((64, 128), (128, 128), (32, 128))
                for nw in (4, 8)]


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    block_q: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    @staticmethod
    def heuristic(seq: int, heads: int, head_dim: int, batch: int, dtype) -> "AttentionConfig":
        # Short sequences: smaller query tiles give more programs to fill 132 SMs.
        if seq <= 128:
            return AttentionConfig(32, 32, 4, 2)
        return AttentionConfig(128, 64, 8, 3)

    @staticmethod
    def candidates(seq: int, heads: int, head_dim: int, batch: int, dtype):
        return [AttentionConfig(bq, bk, nw, 3) for bq in (64, 128) for bk in (64, 128) for nw in (4, 8)
                if bk <= max(32, _pow2(seq)) and bq <= max(32, _pow2(seq))]


@dataclasses.dataclass(frozen=True)
class MosaicAttentionConfig:
    """The Mosaic GPU attention (``flash_attention_mgpu``): KV block, TMA ring depth, launch order."""
    block_kv: int = 128
    stages: int = 2
    order: str = "batch_outer"

    @staticmethod
    def heuristic(seq: int, heads: int, head_dim: int, batch: int, dtype) -> "MosaicAttentionConfig":
        # The ping-pong kernel (bench/results/h100/2026-11-26-attention-mosaic-variants.json): 128-key blocks and 2
        # stages win at T = 128 and 1024 (by 0-12%); at T = 4096, 256-key blocks and 3 stages (241.8 vs 252.3 µs).
        # 2026-11-25: one batch row at a time beat whole-GPU longest-first order at T >= 1024.
        if seq >= 4096:
            return MosaicAttentionConfig(256, 3, "batch_outer")
        return MosaicAttentionConfig(128, 2, "batch_outer")


@dataclasses.dataclass(frozen=True)
class MlpConfig:
    """Fused MLP (4C kept on chip): rows per program and the 4C chunk width."""
    block_m: int = 16
    block_h: int = 64
    num_warps: int = 4
    num_stages: int = 2

    @staticmethod
    def heuristic(m: int, c: int, dtype) -> "MlpConfig":
        # Shared memory holds a (Cp, block_h) slice of W_fc and a (block_h, Cp) slice of W_proj per stage:
        # at C=1600 (Cp=2048) a 64-wide chunk is 2 x 256 KB in bf16, over the H100's 227 KB, so 32 and one stage.
        if _pow2(c) >= 2048:
            return MlpConfig(16, 16, 8, 1)
        return MlpConfig(16, 32, 4, 1)

    @staticmethod
    def candidates(m: int, c: int, dtype):
        return [MlpConfig(16, 16, 4, 1), MlpConfig(16, 32, 4, 1), MlpConfig(16, 32, 8, 1), MlpConfig(32, 16, 8, 1)]


@dataclasses.dataclass(frozen=True)
class DecodeAttentionConfig:
    """Flash-decoding: keys per loop step and how many programs share one (row, head)'s cache."""
    block_k: int = 64
    num_splits: int = 8
    num_warps: int = 4
    num_stages: int = 2

    @staticmethod
    def heuristic(batch: int, heads: int, cache: int, head_dim: int, dtype) -> "DecodeAttentionConfig":
        # One query per (row, head) is too little work to fill 132 SMs at batch 1-8: split the cache so that
        # B·H·splits is about two programs per SM, with at least one key block per split.
        bk = min(64, max(16, _pow2(cache)))
        splits = max(1, min(cache // bk, _pow2(max(1, 264 // (batch * heads)))))
        return DecodeAttentionConfig(bk, splits, 4, 2)

    @staticmethod
    def candidates(batch: int, heads: int, cache: int, head_dim: int, dtype):
        return [DecodeAttentionConfig(bk, sp, nw, 2) for bk in (32, 64, 128) for sp in (1, 4, 8, 16, 32)
                for nw in (2, 4) if bk * sp <= max(bk, cache)]


def shape_key(**shape) -> str:
    parts = []
    for k, v in sorted(shape.items()):
        if k in ("rows", "m"):
            v = _pow2(v)
        if k == "dtype":
            v = jnp.dtype(v).name
        parts.append(f"{k}={v}")
    return ",".join(parts)


def gpu_name() -> str | None:
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return None
    if dev.platform != "gpu":
        return None
    kind = dev.device_kind.lower()
    for short in ("h200", "h100", "a100", "l40s", "l4"):
        if short in kind:
            return short
    return kind.replace(" ", "_")


@functools.lru_cache(maxsize=None)
def load_table(name: str | None) -> dict:
    if name is None:
        return {}
    path = TABLES / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def merge_into_table(path, new: dict) -> None:
    """Merge ``{config class name: {shape key: config fields}}`` into the JSON table at ``path`` (created if missing)."""
    path = Path(path)
    table = json.loads(path.read_text()) if path.is_file() else {}
    for cls_name, entries in new.items():
        table.setdefault(cls_name, {}).update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1, sort_keys=True))


def lookup(cls, **shape):
    """Tuned config for this GPU and shape, else ``cls.heuristic(**shape)``."""
    entry = load_table(gpu_name()).get(cls.__name__, {}).get(shape_key(**shape))
    return cls(**entry) if entry else cls.heuristic(**shape)
