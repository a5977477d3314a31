"""Helpers shared by the kernels: interpret-mode default, Triton compiler params, padding to powers of two, block
checks, the split-K kernels' optional prologue bias."""

from __future__ import annotations

import jax
from jax.experimental.pallas import triton as pltriton


def default_interpret(interpret: bool | None) -> bool:
    """Kernels compile for the GPU there; anywhere else they run in Pallas' interpreter (slow, exact)."""
    return jax.default_backend() != "gpu" if interpret is None else interpret


def compiler_params(num_warps: int, num_stages: int):
    # Always explicit: jax 0.11 lowers a plain pallas_call through Triton, 0.10 would pick Mosaic GPU.
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def check_blocks(**blocks: int) -> None:
    """Every block size a power of two >= 16 (Triton's arrays and dots need it), or a ValueError naming it."""
    for name, v in blocks.items():
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name}={v} must be a power of two >= 16")


def without_x_bias(kernel):
    """A split-K kernel ``kernel(x_ref, xb_ref, *refs)`` called with ``xb_ref=None``: for plain (M, K) activations
    rather than the previous matmul's partials, whose bias it would finish on load."""
    def k(x_ref, *refs):
        kernel(x_ref, None, *refs)
    return k
