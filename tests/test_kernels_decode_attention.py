import numpy as np
import pytest

from pallas_kernels.decode_attention import (decode_attention, decode_attention_append,
                                             decode_attention_append_reference, decode_attention_reference)
from pallas_kernels.matmul import matmul_reference, matmul_split_k
from tests.kernel_base import DTYPES, ON_GPU, check, rand

# (B, S, H, lengths): a single key, a full cache, an empty row, 25 heads, a cache length that is not a power of two.
CASES = [(1, 16, 12, [1]), (2, 64, 5, [64, 23]), (3, 100, 25, [0, 99, 100]), (2, 128, 16, [77, 128])]
if ON_GPU:
    CASES += [(8, 1024, 12, [1024, 1, 513, 64, 999, 1000, 2, 700]), (1, 1024, 25, [1000]), (1, 4096, 12, [4000]),
              (8, 256, 20, [256] * 8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,s,h,lengths", CASES)
def test_decode_attention(b, s, h, lengths, dtype):
    rng = np.random.default_rng(b * s * h)
    q, k, v = rand(rng, (b, h, 64), dtype), rand(rng, (b, s, h, 64), dtype), rand(rng, (b, s, h, 64), dtype)
    lengths = np.array(lengths, np.int32)
    got = decode_attention(q, k, v, lengths)
    want = decode_attention_reference(q.astype("float32"), k.astype("float32"), v.astype("float32"), lengths)
    check(got, want, dtype, 64, f"B{b} S{s} H{h}")
    assert np.all(np.asarray(got, np.float32)[lengths == 0] == 0.0)


@pytest.mark.parametrize("block_k,splits", [(16, 1), (16, 3), (32, 4), (64, 16), (16, 64)])
def test_block_and_split_choices_agree(block_k, splits):
    rng = np.random.default_rng(block_k + splits)
    q = rand(rng, (2, 3, 32), "float32")
    k, v = rand(rng, (2, 70, 3, 32), "float32"), rand(rng, (2, 70, 3, 32), "float32")
    lengths = np.array([70, 9], np.int32)
    got = decode_attention(q, k, v, lengths, block_k=block_k, num_splits=splits)
    check(got, decode_attention_reference(q, k, v, lengths), "float32", 32, f"bk{block_k} splits{splits}")


def test_slots_past_the_length_are_invisible():
    rng = np.random.default_rng(3)
    q, k, v = (np.asarray(rand(rng, shape, "float32")) for shape in ((1, 2, 16), (1, 48, 2, 16), (1, 48, 2, 16)))
    lengths = np.array([20], np.int32)
    k2, v2 = k.copy(), v.copy()
    k2[:, 20:], v2[:, 20:] = 1e4, np.nan  # stale cache slots
    a = np.asarray(decode_attention(q, k, v, lengths, block_k=16, num_splits=2))
    b = np.asarray(decode_attention(q, k2, v2, lengths, block_k=16, num_splits=2))
    np.testing.assert_array_equal(a, b)


def test_validation():
    rng = np.random.default_rng(0)
    q, k = rand(rng, (1, 2, 16), "float32"), rand(rng, (1, 8, 2, 16), "float32")
    lengths = np.array([3], np.int32)
    with pytest.raises(ValueError, match="q.shape"):
        decode_attention(rand(rng, (1, 3, 16), "float32"), k, k, lengths)
    with pytest.raises(ValueError, match="lengths.shape"):
        decode_attention(q, k, k, np.array([1, 2], np.int32))
    with pytest.raises(ValueError, match="head_dim"):
        decode_attention(rand(rng, (1, 2, 24), "float32"), rand(rng, (1, 8, 2, 24), "float32"),
                         rand(rng, (1, 8, 2, 24), "float32"), lengths)
    with pytest.raises(ValueError, match="block_k"):
        decode_attention(q, k, k, lengths, block_k=24)


APPEND_CASES = [(1, 16, 12, [0]), (3, 100, 5, [0, 57, 99]), (2, 64, 25, [63, 1])]
if ON_GPU:
    APPEND_CASES += [(8, 512, 12, [0, 1, 100, 255, 256, 300, 511, 17]), (1, 1024, 25, [1000])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,s,h,pos", APPEND_CASES)
@pytest.mark.parametrize("partials", [False, True])
def test_decode_attention_append(b, s, h, pos, dtype, partials):
    """Finish the QKV projection (from split-K partials or a plain array), append K/V at pos, attend."""
    rng = np.random.default_rng(b * s + h)
    d, c = 64, 64 * h
    kc, vc = rand(rng, (b, s, h, d), dtype), rand(rng, (b, s, h, d), dtype)
    x, w, bias = rand(rng, (b, 128), dtype), rand(rng, (128, 3 * c), dtype, 128 ** -0.5), rand(rng, (3 * c,), dtype)
    pos = np.array(pos, np.int32)
    full = matmul_reference(x, w, bias)  # (B, 3C), rounded to dtype like the kernel's finish
    qkv = matmul_split_k(x, w, bias, split_k=3) if partials else full.reshape(b, 3, h, d)
    got = decode_attention_append(qkv, kc, vc, pos)
    f32 = lambda a: a.astype("float32")  # noqa: E731
    want = decode_attention_append_reference(f32(full), f32(kc), f32(vc), pos)
    check(got[0], want[0], dtype, 64, f"append B{b} S{s} H{h}")
    for g, wnt in zip(got[1:], want[1:]):
        check(g, wnt, dtype, 128, "cache")
        untouched = np.ones(g.shape[:2], bool)
        untouched[np.arange(b), pos] = False
        np.testing.assert_array_equal(np.asarray(g, np.float32)[untouched], np.asarray(wnt, np.float32)[untouched])
