import numpy as np
import pytest

from pallas_kernels.decode_attention import decode_attention, decode_attention_reference
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
    q, k, v = rand(rng, (2, 3, 32), "float32"), rand(rng, (2, 70, 3, 32), "float32"), rand(rng, (2, 70, 3, 32), "float32")
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
