import numpy as np
import pytest

from pallas_kernels.layer_norm import add_layer_norm, add_layer_norm_reference
from pallas_kernels.matmul import matmul, matmul_reference, matmul_split_k
from pallas_kernels.partials import SplitK, resolve
from tests.kernel_base import DTYPES, ON_GPU, check, rand

# (M, K, N): decode-sized M, odd M/N tails, GPT-2 QKV and fc shapes (gpt2-xl's N=4800 is not a multiple of 128).
SHAPES = [(1, 64, 192), (37, 80, 240), (130, 96, 200), (16, 768, 2304)]
if ON_GPU:
    SHAPES += [(8192, 768, 2304), (8192, 768, 3072), (8192, 3072, 768), (1000, 1600, 4800), (8, 1600, 6400),
               (1, 1600, 4800), (1, 6400, 1600), (8, 3072, 768), (2, 768, 50257)]


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


@pytest.mark.parametrize("m,split", [(1, 2), (3, 5), (16, 3), (8, 64)])
def test_split_k_for_decode_sized_m(m, split):
    """Decode shapes: programs split K and write float32 partials; ragged K chunks and N tails included."""
    rng = np.random.default_rng(m * split)
    x, w, b = rand(rng, (m, 200), "float32"), rand(rng, (200, 90), "float32"), rand(rng, (90,), "float32")
    for act in ("none", "gelu_tanh"):
        got = matmul(x, w, b, activation=act, block_n=32, block_k=32, split_k=split)
        check(got, matmul_reference(x, w, b, activation=act), "float32", 200, f"split{split}")
    with pytest.raises(ValueError, match="split_k"):
        matmul(rand(rng, (17, 200), "float32"), w, b, block_m=16, split_k=2)


DECODE_MLP = [(1, 80), (5, 48)] + ([(1, 768), (8, 1600), (16, 1280)] if ON_GPU else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,c", DECODE_MLP)
def test_decode_chain_finishes_partials_in_the_next_kernel(m, c, dtype):
    """The Pallas decode step's MLP + residual/LayerNorm: c_fc partials finished (bias, GELU) as c_proj's
    prologue, c_proj partials finished (bias) inside the residual+LayerNorm kernel."""
    rng = np.random.default_rng(m + c)
    x, res = rand(rng, (m, c), dtype), rand(rng, (m, c), dtype)
    w1, b1 = rand(rng, (c, 4 * c), dtype, c ** -0.5), rand(rng, (4 * c,), dtype)
    w2, b2 = rand(rng, (4 * c, c), dtype, (4 * c) ** -0.5), rand(rng, (c,), dtype)
    lw, lb = rand(rng, (c,), dtype), rand(rng, (c,), dtype)
    p1 = matmul_split_k(x, w1, b1, activation="gelu_tanh")
    p2 = matmul_split_k(p1, w2, b2)
    assert isinstance(p2, SplitK) and p2.parts.dtype == np.float32 and p2.shape == (m, c)
    f32 = lambda a: a.astype("float32")  # noqa: E731
    hidden = matmul_reference(f32(x), f32(w1), f32(b1), activation="gelu_tanh").astype(dtype)  # stored like an
    want = matmul_reference(f32(hidden), f32(w2), f32(b2))                                      # unsplit matmul's
    check(resolve(p2), want, dtype, 4 * c, "split-K MLP")
    h, y = add_layer_norm(p2, res, lw, lb)
    hr, yr = add_layer_norm_reference(want.astype(dtype), res, lw, lb)
    check(h, hr, dtype, 4 * c, "partials + residual")
    check(y, yr, dtype, 4 * c, "partials LayerNorm")


def test_validation():
    rng = np.random.default_rng(0)
    x, w, b = rand(rng, (4, 8), "float32"), rand(rng, (8, 16), "float32"), rand(rng, (16,), "float32")
    with pytest.raises(ValueError, match="activation"):
        matmul(x, w, b, activation="relu")
    with pytest.raises(ValueError, match="shapes"):
        matmul(x, w[:4], b)
    with pytest.raises(ValueError, match="block_n"):
        matmul(x, w, b, block_n=24)
