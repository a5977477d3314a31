import numpy as np
import pytest

from pallas_kernels.matmul import matmul, matmul_reference
from tests.kernel_base import DTYPES, ON_GPU, check, rand

# (M, K, N): decode-sized M, odd M/N tails, GPT-2 QKV and fc shapes (gpt2-xl's N=4800 is not a multiple of 128).
SHAPES = [(1, 64, 192), (37, 80, 240), (130, 96, 200), (16, 768, 2304)]
if ON_GPU:
    SHAPES += [(8192, 768, 2304), (8192, 768, 3072), (8192, 3072, 768), (1000, 1600, 4800), (8, 1600, 6400)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("activation", ["none", "gelu_tanh"])
def test_matmul(m, k, n, dtype, activation):
    rng = np.random.default_rng(m + k + n)
    x, w, b = rand(rng, (m, k), dtype), rand(rng, (k, n), dtype, k ** -0.5), rand(rng, (n,), dtype)
    got = matmul(x, w, b, activation=activation)
    want = matmul_reference(x.astype("float32"), w.astype("float32"), b.astype("float32"), activation=activation)
    check(got, want, dtype, k, f"{m}x{k}x{n}")


@pytest.mark.parametrize("bm,bn,bk", [(16, 16, 16), (32, 64, 32), (64, 32, 128)])
def test_blocks_overhang_every_dimension(bm, bn, bk):
    rng = np.random.default_rng(bm)
    x, w, b = rand(rng, (3, 29, 72), "float32"), rand(rng, (72, 100), "float32"), rand(rng, (100,), "float32")
    got = matmul(x, w, b, block_m=bm, block_n=bn, block_k=bk)
    check(got, matmul_reference(x, w, b), "float32", 72, "overhang")


def test_validation():
    rng = np.random.default_rng(0)
    x, w, b = rand(rng, (4, 8), "float32"), rand(rng, (8, 16), "float32"), rand(rng, (16,), "float32")
    with pytest.raises(ValueError, match="activation"):
        matmul(x, w, b, activation="relu")
    with pytest.raises(ValueError, match="shapes"):
        matmul(x, w[:4], b)
    with pytest.raises(ValueError, match="block_n"):
        matmul(x, w, b, block_n=24)
