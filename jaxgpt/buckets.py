"""Shape buckets: prompts are right-padded to a few lengths and batches to a few sizes, so a new prompt inside a
known bucket never recompiles."""

from __future__ import annotations

import numpy as np


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` >= n (batches padded for the data-parallel degree)."""
    return -(-n // multiple) * multiple


def bucket_length(t: int, n_ctx: int) -> int:
    """Smallest bucket >= t: powers of two from 8, capped at n_ctx."""
    b = 8
    while b < t:
        b *= 2
    return min(b, n_ctx)


def pad_rows(rows: list[list[int]], batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows of ids -> ``ids`` (batch, length) right-padded with zeros and ``last`` (batch,), each row's last
    real position (0 for padding rows). Right padding never reaches real positions: attention is causal."""
    ids = np.zeros((batch, length), np.int32)
    last = np.zeros((batch,), np.int32)
    for r, row in enumerate(rows):
        ids[r, :len(row)], last[r] = row, len(row) - 1
    return ids, last
