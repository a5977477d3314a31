"""The Mosaic GPU prefill matmul: Mosaic GPU's interpreter on a CPU (TMA ring, barriers, three warpgroups, the
epilogue; the product as a jnp dot), compiled on a Hopper GPU; its CUDA lowering is in test_kernels_lowering.py."""

import numpy as np
import pytest

from pallas_kernels.matmul import matmul_reference
from tests.kernel_base import ON_GPU, check, rand

mgpu = pytest.importorskip("pallas_kernels.matmul_mgpu")

# (M, K, N, overrides): one K step, a ring that wraps, both planned tiles, explicit narrow tiles, two stages.
T64 = {"block_m": 64, "block_n": 64, "stages": 3}
CASES = [(128, 64, 192, {}), (256, 448, 256, {}), (128, 320, 192, {"stages": 2}), (256, 128, 128,
         {"block_m": 128, "block_n": 128, "stages": 3}), (256, 192, 64, T64), (128, 64, 64, T64),
         # one MMA in flight, slots freed a step late: a single step, a wrapping 2-slot ring, a 3-slot ring
         (128, 64, 192, {"delay_release": True}), (128, 448, 256, {"stages": 2, "delay_release": True}),
         (256, 320, 192, {"stages": 3, "delay_release": True})]
if ON_GPU:
    CASES += [(8192, 768, 2304, {}), (8192, 3072, 768, {}), (8192, 1600, 4800, {}), (8192, 1600, 6400, {}),
              (8192, 6400, 1600, {"block_m": 128, "block_n": 64, "stages": 3}), (256, 768, 3072, {"stages": 2}),
              (8192, 768, 2304, {"delay_release": True}), (8192, 1600, 6400, {"delay_release": True})]


def _cases():
    """Every tile plan with no epilogue; the GELU epilogue (same pipeline, another store) on the first two by
    default, on all with --full."""
    for i, (m, k, n, kw) in enumerate(CASES):
        yield pytest.param(m, k, n, kw, "none", id=f"{m}-{k}-{n}-kw{i}-none")
        yield pytest.param(m, k, n, kw, "gelu_tanh", id=f"{m}-{k}-{n}-kw{i}-gelu_tanh",
                           marks=() if i < 2 else pytest.mark.slow)


@pytest.mark.parametrize("m,k,n,kw,activation", list(_cases()))
def test_mosaic_matmul_matches_the_reference(m, k, n, kw, activation):
    rng = np.random.default_rng(m + k + n)
    x, w, b = rand(rng, (m, k), "bfloat16"), rand(rng, (k, n), "bfloat16", k ** -0.5), rand(rng, (n,), "bfloat16")
    got = mgpu.matmul_mgpu(x, w, b, activation=activation, **kw)
    want = matmul_reference(x.astype("float32"), w.astype("float32"), b.astype("float32"), activation=activation)
    check(got, want, "bfloat16", k, f"{m}x{k}x{n} {kw}")


def test_float16_and_leading_dims():
    rng = np.random.default_rng(3)
    x, w, b = rand(rng, (2, 64, 128), "float16"), rand(rng, (128, 192), "float16", 128 ** -0.5), rand(rng, (192,), "float16")
    got = mgpu.matmul_mgpu(x, w, b)
    assert got.shape == (2, 64, 192)
    check(got, matmul_reference(x.astype("float32"), w.astype("float32"), b.astype("float32")), "float16", 128, "f16")


@pytest.mark.parametrize("m,k,n,want_bn", [
    (8192, 768, 2304, 192), (8192, 768, 3072, 256), (8192, 3072, 768, 192), (8192, 1600, 6400, 256),
    (8192, 1600, 4800, 192), (8192, 6400, 1600, None), (100, 768, 768, None), (128, 100, 256, None),
    (128, 64, 100, None)])
def test_plan_takes_the_measured_winners_or_says_no(m, k, n, want_bn):
    """The H100's winners (bench/results/h100/2026-11-25-prefill-matmul-tiles.txt); None where the Triton matmul is faster
    or the shape does not tile."""
    got = mgpu.plan(m, n, k)
    if want_bn is None:
        assert got is None
        return
    bm, bn, stages = got
    assert bn == want_bn and m % (2 * bm) == 0 and n % bn == 0 and 2 <= stages <= 4
    smem = stages * (2 * bm * 64 + 64 * bn) * 2 + 2 * bm * bn * 2
    assert smem <= mgpu.SMEM_BYTES


@pytest.mark.parametrize("shapes,dtype,kw,needle", [
    (((128, 64), (64, 100), (100,)), "bfloat16", {}, "no Mosaic matmul tiling planned"),
    (((128, 64), (64, 64), (64,)), "float32", {}, "bfloat16 or float16"),
    (((128, 64), (32, 64), (64,)), "bfloat16", {}, "shapes do not fit"),
    (((128, 64), (64, 64), (64,)), "bfloat16", {"activation": "relu"}, "activation"),
    (((128, 64), (64, 320), (320,)), "bfloat16", {"block_m": 64, "block_n": 320, "stages": 2}, "at most 256"),
    (((128, 64), (64, 192), (192,)), "bfloat16", {"block_m": 128}, "multiple of 256"),
])
def test_bad_input_is_a_clear_error(shapes, dtype, kw, needle):
    rng = np.random.default_rng(0)
    x, w, b = (rand(rng, s, dtype) for s in shapes)
    with pytest.raises(ValueError, match=needle):
        mgpu.matmul_mgpu(x, w, b, **kw)
