"""Device-time measurement: CUPTI kernel time on a GPU (jax's Mosaic GPU profiler), wall clock on a CPU.

CUPTI sums the GPU time of every kernel a call launches, so Python dispatch and launch gaps stay out of the
number; the method string says which clock was used, and every table prints it.
"""

from __future__ import annotations

import functools
import re
import statistics
import sys
import time

import jax

METHOD_GPU = "CUPTI device time (jax.experimental.mosaic.gpu.profiler.measure), median of {n} after {w} warm-up"
METHOD_CPU = "wall clock around block_until_ready (CPU), median of {n} after {w} warm-up"


def require_gpu(tool: str) -> None:
    """Exit with status 2 and one line on stderr where ``tool`` has no GPU to measure (its numbers would be
    meaningless on a CPU)."""
    if jax.default_backend() != "gpu":
        print(f"error: {tool} needs a GPU (jax sees {jax.default_backend()})", file=sys.stderr)
        raise SystemExit(2)


def device_time_ms(fn, *args, iterations: int = 20, warmup: int = 2) -> dict:
    """Median/min/max milliseconds of ``fn(*args)`` (fn should be jitted or compiled)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    if jax.default_backend() == "gpu":
        from jax.experimental.mosaic.gpu import profiler
        _, times = profiler.measure(fn, iterations=iterations)(*args)
        times = [t for t in times if t is not None]
        method = METHOD_GPU.format(n=iterations, w=warmup)
    else:
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append((time.perf_counter() - t0) * 1e3)
        method = METHOD_CPU.format(n=iterations, w=warmup)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "method": method}


def kernel_breakdown(fn, *args) -> list[tuple[str, float]]:
    """Per-kernel device time (ms) of one call, largest first (GPU only)."""
    from jax.experimental.mosaic.gpu import profiler
    jax.block_until_ready(fn(*args))
    _, per_kernel = profiler.measure(fn, aggregate=False)(*args)
    return sorted(per_kernel, key=lambda kv: -kv[1])


def kernels_of(thunk) -> tuple[object, list[tuple[str, float]]]:
    """Run ``thunk()`` once (no warm-up, no jit: it may donate its inputs) and return its result and the device
    time (ms) of every kernel it launched, in order (GPU only; CUPTI through jax's Mosaic GPU profiler's
    extension, the hook ``profiler.measure`` uses)."""
    from jax.experimental.mosaic.gpu import profiler
    ext = profiler.mosaic_gpu_lib._mosaic_gpu_ext
    ext._cupti_init()
    try:
        out = jax.block_until_ready(thunk())
    finally:
        timings = ext._cupti_get_timings(True)
    return out, list(timings or [])


def group_kernels(kernels: list[tuple[str, float]]) -> list[tuple[str, int, float]]:
    """(name without its numeric suffixes, count, total ms) per kind of kernel, largest total first."""
    groups: dict[str, list] = {}
    for name, ms in kernels:
        g = groups.setdefault(re.sub(r"(_+\d+|\.\d+)+$", "", name), [0, 0.0])
        g[0] += 1
        g[1] += ms
    return sorted(((n, c, t) for n, (c, t) in groups.items()), key=lambda g: -g[2])


@functools.lru_cache(maxsize=1)
def random_weights(model: str):
    """``(cfg, state_dict)`` of a preset with seed-0 random weights, kept for the next case of the same model
    (drawing gpt2-xl's 1.5 B values on the host takes seconds; the cases run model by model)."""
    from jaxgpt import GPTConfig, random_state_dict
    cfg = GPTConfig.from_name(model)
    return cfg, random_state_dict(cfg, seed=0)
