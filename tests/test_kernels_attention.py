import numpy as np
import pytest

from pallas_kernels.flash_attention import flash_attention, flash_attention_reference
from tests.kernel_base import DTYPES, ON_GPU, check, rand

# (B, T, H): T=1, T not a multiple of the block, 25 heads, GPT-2 head counts.
CASES = [(1, 1, 12), (2, 37, 5), (1, 100, 25), (2, 64, 16)]
if ON_GPU:
    CASES += [(8, 1024, 12), (2, 1000, 25), (1, 4096, 12), (4, 128, 20), (3, 1023, 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,t,h", CASES)
def test_causal_flash_attention(b, t, h, dtype):
    rng = np.random.default_rng(b * t * h)
    qkv = rand(rng, (b, t, 3, h, 64), dtype)
    got = flash_attention(qkv)
    check(got, flash_attention_reference(qkv.astype("float32")), dtype, 64, f"B{b} T{t} H{h}")


@pytest.mark.parametrize("bq,bk", [(16, 16), (32, 16), (16, 64), (64, 32)])
def test_block_shapes_and_padding_mask(bq, bk):
    rng = np.random.default_rng(bq * bk)
    qkv = rand(rng, (3, 45, 3, 4, 16), "float32")
    lengths = np.array([45, 17, 1], np.int32)
    got = flash_attention(qkv, lengths, block_q=bq, block_k=bk)
    check(got, flash_attention_reference(qkv, lengths), "float32", 16, "masked")
    check(flash_attention(qkv, block_q=bq, block_k=bk), flash_attention_reference(qkv), "float32", 16, "plain")


def test_padding_mask_makes_padded_keys_invisible():
    """Changing keys/values past a row's length must not change that row's output."""
    rng = np.random.default_rng(5)
    qkv = np.asarray(rand(rng, (1, 40, 3, 2, 16), "float32"))
    other = qkv.copy()
    other[:, 20:, 1:] = 100.0  # keys and values after position 20
    lengths = np.array([20], np.int32)
    a = np.asarray(flash_attention(qkv, lengths, block_q=16, block_k=16))
    b = np.asarray(flash_attention(other, lengths, block_q=16, block_k=16))
    np.testing.assert_array_equal(a[:, :20], b[:, :20])


def test_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="qkv.shape"):
        flash_attention(rand(rng, (2, 8, 4, 16), "float32"))
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention(rand(rng, (1, 8, 3, 2, 24), "float32"))
    with pytest.raises(ValueError, match="block_q"):
        flash_attention(rand(rng, (1, 8, 3, 2, 16), "float32"), block_q=48)
