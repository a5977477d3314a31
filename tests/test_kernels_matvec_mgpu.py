"""The Mosaic GPU decode projection (swap-AB wgmma, weights streamed before the PDL wait): Mosaic GPU's
interpreter on a CPU (TMA copies, barriers; the product as jnp dots), compiled on a Hopper GPU, with and without
programmatic dependent launch; its CUDA lowering is checked on the CPU too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernel_base import ON_GPU, check, rand

mv = pytest.importorskip("pallas_kernels.matvec_mgpu")

# (M, K, N, splits): one tile, several tiles a split, many splits, all 8 rows, odd row counts
CASES = [(1, 64, 64, 1), (1, 256, 128, 2), (3, 320, 64, 5), (8, 128, 192, 1), (5, 1024, 64, 1)]
if ON_GPU:
    CASES += [(1, 1600, 4800, 5), (1, 1600, 1600, 5), (1, 1600, 6400, 5), (1, 6400, 1600, 20), (8, 768, 2304, 3),
              (2, 3072, 768, 12)]


@pytest.mark.parametrize("pdl", [True, False])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("m,k,n,splits", CASES)
def test_matvec_matches_the_reference(m, k, n, splits, dtype, pdl):
    rng = np.random.default_rng(m + k + n + splits)
    x, w = rand(rng, (m, k), dtype), rand(rng, (k, n), dtype, k ** -0.5)
    p = mv.matvec_mgpu(x, w, splits=splits, pdl=pdl)
    assert p.shape == (splits, n, mv.ROWS) and p.dtype == jnp.float32
    assert not bool(jnp.isnan(p).any())
    np.testing.assert_array_equal(np.asarray(p.sum(0).T[m:]), 0.0)  # the padded rows stay zero
    check(mv.matvec_mgpu_finish(p, m), mv.matvec_mgpu_reference(x, w), "float16", k, f"{m}x{k}x{n}/{splits}")


@pytest.mark.parametrize("shapes,kw,needle", [
    (((1, 100), (100, 64)), {"splits": 1}, "K=100"),
    (((1, 128), (128, 100)), {"splits": 1}, "N=100"),
    (((9, 128), (128, 64)), {"splits": 1}, "M=9"),
    (((1, 64 * 17), (64 * 17, 64)), {"splits": 1}, "at most"),
    (((1, 128), (64, 64)), {"splits": 1}, "do not fit"),
])
def test_bad_shapes_raise(shapes, kw, needle):
    x, w = (jnp.zeros(s, jnp.bfloat16) for s in shapes)
    with pytest.raises(ValueError, match=needle):
        mv.matvec_mgpu(x, w, **kw)


def test_cuda_lowering_with_pdl():
    """The kernel lowers for CUDA (Mosaic GPU's rules of this jax) at gpt2-xl's c_attn shape, PDL on."""
    f = jax.jit(lambda x, w: mv.matvec_mgpu(x, w, splits=5, pdl=True, interpret=False))
    text = f.trace(jax.ShapeDtypeStruct((1, 1600), jnp.bfloat16),
                   jax.ShapeDtypeStruct((1600, 4800), jnp.bfloat16)).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in text
