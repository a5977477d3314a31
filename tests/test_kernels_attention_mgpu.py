"""The experimental Mosaic GPU attention: Mosaic GPU's interpreter on a CPU (TMA copies, barriers, three warpgroups;
the products as jnp dots), compiled on a Hopper GPU; its CUDA lowering is in test_kernels_lowering.py."""

import numpy as np
import pytest

from pallas_kernels.flash_attention import flash_attention_reference
from tests.kernel_base import ON_GPU, check, rand

mgpu = pytest.importorskip("pallas_kernels.flash_attention_mgpu")

# (B, T, H, block_kv, stages): one KV step, a pipelined ring with reloads, three stages, two heads and rows.
CASES = [(1, 128, 1, 128, 1), (1, 256, 1, 64, 2), pytest.param(2, 256, 2, 128, 2, marks=pytest.mark.slow),
         pytest.param(1, 384, 1, 64, 3, marks=pytest.mark.slow)]
if ON_GPU:
    CASES += [(8, 1024, 12, 128, 2), (8, 1024, 25, 64, 3), (1, 1024, 12, 128, 2), (4, 4096, 12, 128, 2),
              (4, 4096, 12, 256, 3), (8, 1024, 25, 256, 2), (8, 128, 12, 64, 2), (8, 128, 12, 128, 2)]


@pytest.mark.parametrize("b,t,h,block_kv,stages", CASES)
def test_mosaic_attention_matches_the_reference(b, t, h, block_kv, stages):
    rng = np.random.default_rng(t + h + block_kv)
    qkv = rand(rng, (b, t, 3, h, 64), "bfloat16")
    got = mgpu.flash_attention_mgpu(qkv, block_kv=block_kv, stages=stages)
    check(got, flash_attention_reference(qkv.astype("float32")), "bfloat16", 64, f"B{b} T{t} H{h} kv{block_kv}")


@pytest.mark.parametrize("b,t,h,block_kv,order", [(1, 100, 2, 64, "tiles_outer"),
                                                   pytest.param(2, 200, 1, 128, "batch_outer", marks=pytest.mark.slow)]
                         + ([(8, 1000, 12, 128, "tiles_outer"), (1, 77, 25, 128, "tiles_outer")] if ON_GPU else []))
def test_any_length_is_padded_and_any_order_is_the_same(b, t, h, block_kv, order):
    rng = np.random.default_rng(t)
    qkv = rand(rng, (b, t, 3, h, 64), "bfloat16")
    got = mgpu.flash_attention_mgpu(qkv, block_kv=block_kv, order=order)
    assert got.shape == (b, t, h, 64)
    check(got, flash_attention_reference(qkv.astype("float32")), "bfloat16", 64, f"T{t} {order}")


def test_float16():
    rng = np.random.default_rng(5)
    qkv = rand(rng, (1, 128, 3, 2, 64), "float16")
    check(mgpu.flash_attention_mgpu(qkv, block_kv=64), flash_attention_reference(qkv.astype("float32")), "float16",
          64, "f16")


@pytest.mark.parametrize("shape,dtype,kw,needle", [
    ((1, 128, 3, 2, 32), "bfloat16", {}, "head_dim"),
    ((1, 128, 3, 2, 64), "bfloat16", {"order": "random"}, "order"),
    ((1, 128, 3, 2, 64), "float32", {}, "bfloat16 or float16"),
    ((1, 128, 3, 2, 64), "bfloat16", {"block_kv": 96}, "block_kv"),
    ((1, 128, 3, 2, 64), "bfloat16", {"stages": 7}, "stages"),
    ((1, 128, 2, 2, 64), "bfloat16", {}, "(B, T, 3, H, D)"),
])
def test_bad_input_is_a_clear_error(shape, dtype, kw, needle):
    qkv = rand(np.random.default_rng(0), shape, dtype)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        mgpu.flash_attention_mgpu(qkv, **kw)
