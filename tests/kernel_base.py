"""Shared helpers for kernel tests: fresh random inputs, a per-dtype tolerance table, NaN never passes.

Kernels run in Pallas' interpreter on a CPU (CI) and compiled on a GPU (the same tests, ``ON_GPU``). Errors are
measured against a float32 reference on the same (rounded) inputs; the tolerance is a per-dtype table scaled by
√(reduction length), as tokamax's normalization tests do.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

ON_GPU = jax.default_backend() == "gpu"
DTYPES = ["float32", "bfloat16"] + (["float16"] if ON_GPU else [])
# atol per element per √(reduction length); f32 on the GPU allows TF32-free fp32 rounding only.
ATOL = {"float32": 2e-6, "bfloat16": 4e-3, "float16": 6e-4}


def rand(rng, shape, dtype, scale=1.0):
    x = rng.standard_normal(shape).astype(np.float32) * scale
    return jnp.asarray(x, dtype=getattr(jnp, dtype))


def check(got, want, dtype, reduction: int, what: str = ""):
    got32, want32 = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got32.shape == want32.shape, (got32.shape, want32.shape)
    assert np.all(np.isfinite(got32)), f"{what}: non-finite output"
    err = np.abs(got32 - want32)
    tol = ATOL[dtype] * math.sqrt(reduction) * max(1.0, float(np.max(np.abs(want32))))
    print(f"{what}: max err {err.max():.2e} mean {err.mean():.2e} tol {tol:.2e}")
    assert err.max() <= tol, f"{what}: max err {err.max():.3e} > {tol:.3e}"
