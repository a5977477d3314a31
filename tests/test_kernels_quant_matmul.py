"""The int8/int4 weight-only matmul against dequantize-then-matmul in float32 (interpret mode on CPU, compiled on a
GPU), and the formats themselves: round trips, error bounds, int4 packing."""

import numpy as np
import pytest

from pallas_kernels.quant_matmul import quant_matmul, quant_matmul_reference
from pallas_kernels.quant_format import QWeight, dequantize, quantize
from tests.kernel_base import DTYPES, ON_GPU, check, rand

# (M, K, N): M=1 and odd M, K not a multiple of the int4 group (gpt2-xl's 1600) or of the int8 block, N tails.
SHAPES = [(1, 200, 96), (3, 1600, 80), (40, 136, 48), (17, 96, 200)]
if ON_GPU:
    SHAPES += [(1, 768, 2304), (8, 1600, 6400), (1, 6400, 1600), (64, 768, 3072), (8192, 768, 2304)]


def _weights(rng, k, n, bits, group=None):
    w = rng.standard_normal((k, n)).astype(np.float32) * k ** -0.5
    return w, quantize(w, bits=bits, group=group)


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (4, 128)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_quant_matmul_equals_dequantize_then_matmul(m, k, n, dtype, bits, group):
    rng = np.random.default_rng(m * 7 + k + n + bits)
    _, qw = _weights(rng, k, n, bits, group)
    x, b = rand(rng, (m, k), dtype), rand(rng, (n,), dtype)
    for act in ("none", "gelu_tanh"):
        got = quant_matmul(x, qw, b, activation=act)
        want = quant_matmul_reference(x.astype("float32"), qw, b.astype("float32"), activation=act)
        check(got, want, dtype, k, f"int{bits} {m}x{k}x{n} {act}")


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("split", [1, 2, 7])
def test_split_k_and_blocks_are_free_choices(bits, split):
    """Any K split and block size gives the same product: ragged chunks, overhanging M/N blocks."""
    rng = np.random.default_rng(split + bits)
    _, qw = _weights(rng, 300, 72, bits, 32 if bits == 4 else None)
    x, b = rand(rng, (5, 300), "float32"), rand(rng, (72,), "float32")
    want = quant_matmul_reference(x, qw, b)
    for bm, bn in ((16, 16), (16, 64), (32, 32)):
        check(quant_matmul(x, qw, b, split_k=split, block_m=bm, block_n=bn), want, "float32", 300, f"split {split}")


@pytest.mark.parametrize("m", [1, 20])
def test_float32_output_for_the_lm_head(m):
    """bf16 activations, float32 logits (``out_dtype``), a vocabulary-sized N that no block divides."""
    rng = np.random.default_rng(m)
    _, qw = _weights(rng, 64, 1003, 8)
    x, b = rand(rng, (m, 64), "bfloat16"), rand(rng, (1003,), "bfloat16")
    got = quant_matmul(x, qw, b, out_dtype=np.float32)
    assert got.dtype == np.float32
    want = quant_matmul_reference(x.astype("float32"), qw, b.astype("float32"), out_dtype=np.float32)
    check(got, want, "bfloat16", 64, f"lm head m={m}")


def test_leading_dims_are_kept():
    rng = np.random.default_rng(3)
    _, qw = _weights(rng, 64, 48, 8)
    x, b = rand(rng, (2, 3, 64), "float32"), rand(rng, (48,), "float32")
    got = quant_matmul(x, qw, b)
    assert got.shape == (2, 3, 48)
    check(got.reshape(6, 48), quant_matmul_reference(x.reshape(6, 64), qw, b), "float32", 64, "leading dims")


@pytest.mark.parametrize("bits,group,bound", [(8, None, 0.5 / 127), (4, 32, 0.5 / 7), (4, 128, 0.5 / 7)])
def test_round_trip_error_is_within_half_a_step(bits, group, bound):
    """|w - dequant(quant(w))| <= scale / 2 per element: bounded by half a step of each column's (group's) max."""
    rng = np.random.default_rng(bits)
    w, qw = _weights(rng, 200, 64, bits, group)
    back = np.asarray(dequantize(qw))
    assert back.shape == w.shape and np.all(np.isfinite(back))
    if bits == 8:
        amax = np.abs(w).max(0, keepdims=True)
    else:
        pad = np.zeros((-(-200 // group) * group, 64), np.float32)
        pad[:200] = w
        amax = np.repeat(np.abs(pad.reshape(-1, group, 64)).max(1), group, axis=0)[:200]
    assert np.all(np.abs(w - back) <= bound * amax * (1 + 1e-5) + 1e-12)
    assert np.abs(w - back).max() > 0  # a lossy code, not a copy


def test_int4_packing_layout():
    """Byte r of a group holds row r (low nibble) and row r + group/2 (high nibble), each as value + 8."""
    w = np.zeros((64, 2), np.float32)
    w[:, 0] = np.arange(64) % 15 - 7  # values -7..7 at scale 1 (column max 7)
    w[:, 1] = -8 * (np.arange(64) == 40) + 7 * (np.arange(64) == 0)  # -8 only reachable as a clipped value
    qw = quantize(w, bits=4, group=32)
    assert qw.q.dtype == np.uint8 and qw.q.shape == (32, 2) and qw.scale.shape == (2, 2)
    q = np.asarray(qw.q)
    np.testing.assert_array_equal(q[:16, 0] & 15, (w[:16, 0] + 8).astype(np.uint8))
    np.testing.assert_array_equal(q[:16, 0] >> 4, (w[16:32, 0] + 8).astype(np.uint8))
    np.testing.assert_array_equal(q[16:32, 0] & 15, (w[32:48, 0] + 8).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(dequantize(qw))[:, 0], w[:, 0])


def test_zero_columns_and_padding_rows_stay_zero():
    w = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    w[:, 2] = 0.0
    for bits in (8, 4):
        qw = quantize(w, bits=bits, group=32)
        back = np.asarray(dequantize(qw))
        assert np.all(back[:, 2] == 0) and np.all(np.isfinite(np.asarray(qw.scale)))


@pytest.mark.parametrize("make,needle", [
    (lambda q: QWeight(q.q[:-1], q.scale, q.bits, q.group, q.k), "q must be"),
    (lambda q: QWeight(q.q, q.scale[:, :-1], q.bits, q.group, q.k), "scale must be"),
    (lambda q: QWeight(q.q.astype(np.int8), q.scale, q.bits, q.group, q.k), "uint8"),
    (lambda q: QWeight(q.q, q.scale, q.bits, 48, q.k), "power of two"),
    (lambda q: QWeight(q.q, q.scale, 3, q.group, q.k), "bits=3"),
])
def test_bad_weights_are_clear_errors(make, needle):
    rng = np.random.default_rng(1)
    _, qw = _weights(rng, 64, 32, 4, 32)
    x, b = rand(rng, (2, 64), "float32"), rand(rng, (32,), "float32")
    with pytest.raises(ValueError, match=needle):
        quant_matmul(x, make(qw), b)
    with pytest.raises(ValueError, match="shapes do not fit"):
        quant_matmul(rand(rng, (2, 63), "float32"), qw, b)
