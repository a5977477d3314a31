"""The fused ln_f + LM head decode kernel against its float32 reference and against the two-kernel path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.ops import XlaOps
from pallas_kernels.layer_norm import add_layer_norm
from pallas_kernels.lm_head import BM, LMHeadPlan, lm_head_decode, lm_head_decode_reference
from pallas_kernels.partials import SplitK
from tests.kernel_base import DTYPES, ON_GPU, check, rand


def _inputs(seed, B, C, V, P, dtype):
    rng = np.random.default_rng(seed)
    r = rand(rng, (B, C), dtype)
    parts = SplitK(rand(rng, (P, B, C), "float32", 0.5), rand(rng, (C,), dtype, 0.1), "none",
                   jnp.dtype(getattr(jnp, dtype)))
    return r, parts, rand(rng, (C,), dtype, 0.2) + 1, rand(rng, (C,), dtype, 0.1), rand(rng, (V, C), dtype, 0.05)


SHAPES = [(1, 64, 211, 1), (1, 200, 517, 3), (3, 96, 300, 2), (BM, 64, 129, 8)]
if ON_GPU:
    SHAPES += [(1, 768, 50257, 8), (1, 1600, 50257, 8), (8, 1600, 50257, 10)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,C,V,P", SHAPES)
def test_matches_reference(B, C, V, P, dtype):
    r, parts, w, b, wte = _inputs(B * 7 + C, B, C, V, P, dtype)
    plan = None if ON_GPU else LMHeadPlan(programs=3, block_n=64, block_k=32)
    got = lm_head_decode(r, parts, w, b, wte, eps=1e-5, plan=plan)
    want = lm_head_decode_reference(r, parts, w, b, wte, eps=1e-5)
    assert got.dtype == jnp.float32 and got.shape == (B, V)
    check(got, want, dtype, C, f"lm_head B{B} C{C} V{V}")


@pytest.mark.parametrize("plan", [LMHeadPlan(programs=1, block_n=16, block_k=16),
                                  LMHeadPlan(programs=5, block_n=128, block_k=128, num_warps=4, num_stages=2),
                                  LMHeadPlan(programs=3, block_n=32, block_k=64, flat=False)],
                         ids=["one-program", "wide-tiles", "nested-loops"])
def test_plans(plan):
    r, parts, w, b, wte = _inputs(1, 2, 160, 333, 2, "bfloat16")
    check(lm_head_decode(r, parts, w, b, wte, eps=1e-5, plan=plan),
          lm_head_decode_reference(r, parts, w, b, wte, eps=1e-5), "bfloat16", 160, "plan")


def test_equals_the_two_kernel_path():
    """ln_f by the residual+LayerNorm kernel, then XLA's product: the same float32 logits (both round the
    normalised rows to the compute dtype at the same point)."""
    r, parts, w, b, wte = _inputs(5, 2, 192, 400, 4, "float32")
    _, normed = add_layer_norm(parts, r, w, b, eps=1e-5)
    plan = None if ON_GPU else LMHeadPlan(programs=4, block_n=64, block_k=64)
    got = lm_head_decode(r, parts, w, b, wte, eps=1e-5, plan=plan)
    check(got, XlaOps.lm_head(normed, wte), "float32", 192, "two-kernel path")


INT8_SHAPES = [(1, 64, 211, 1), (3, 200, 517, 3)] + ([(1, 1600, 50257, 8), (8, 768, 50257, 4)] if ON_GPU else [])


def _int8_head(wte):
    from pallas_kernels.quant_format import head_from_copy, quantize
    w = quantize(np.asarray(wte, np.float32).T, bits=8)  # the checkpoint's (C, V) copy, a scale a vocabulary entry
    return head_from_copy(w.q, w.scale)  # held (V, C)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,C,V,P", INT8_SHAPES)
def test_int8_head_matches_reference_and_the_two_kernel_path(B, C, V, P, dtype):
    """The int8 head ((V, C) int8, a scale a row): the fused kernel against its reference, and against the two-kernel
    path it replaces (residual+LayerNorm, then the XLA product the other backends use)."""
    r, parts, w, b, wte = _inputs(B * 5 + C, B, C, V, P, dtype)
    head = _int8_head(wte)
    assert head.q.shape == (V, C) and head.scale.shape == (V,)
    plan = None if ON_GPU else LMHeadPlan(programs=3, block_n=64, block_k=32)
    got = lm_head_decode(r, parts, w, b, head, eps=1e-5, plan=plan)
    assert got.dtype == jnp.float32 and got.shape == (B, V) and not bool(jnp.isnan(got).any())
    check(got, lm_head_decode_reference(r, parts, w, b, head, eps=1e-5), dtype, C, f"int8 head B{B} C{C} V{V}")
    _, normed = add_layer_norm(parts, r, w, b, eps=1e-5)
    check(got, XlaOps.lm_head(normed, head), dtype, C, "two-kernel int8 head")


def test_int8_head_default_tiles():
    """The int8 head's default plan (256-deep K tiles): one partial K tile at C = 200, a partial vocabulary item."""
    r, parts, w, b, wte = _inputs(11, 2, 200, 333, 2, "bfloat16")
    head = _int8_head(wte)
    plan = LMHeadPlan.heuristic(3, int8=True)
    assert plan.block_k == 256
    assert LMHeadPlan.heuristic(3, int8=True, itemsize=4).block_k == 128  # a float32 model: 256 overflows smem
    check(lm_head_decode(r, parts, w, b, head, eps=1e-5, plan=plan),
          lm_head_decode_reference(r, parts, w, b, head, eps=1e-5), "bfloat16", 200, "int8 head default tiles")


def test_bad_input_is_a_value_error():
    r, parts, w, b, wte = _inputs(2, 1, 64, 100, 1, "float32")
    with pytest.raises(ValueError, match="rows"):
        lm_head_decode(jnp.zeros((BM + 1, 64)), SplitK(jnp.zeros((1, BM + 1, 64)), b, "none", jnp.dtype("float32")),
                       w, b, wte, eps=1e-5)
    with pytest.raises(ValueError, match="wte"):
        lm_head_decode(r, parts, w, b, wte.astype(jnp.bfloat16), eps=1e-5)
    with pytest.raises(ValueError, match="partials"):
        lm_head_decode(r, SplitK(parts.parts, parts.bias, "gelu_tanh", parts.dtype), w, b, wte, eps=1e-5)
    with pytest.raises(ValueError, match="block_n"):
        LMHeadPlan(programs=2, block_n=48)
    from pallas_kernels.quant_format import QHead
    head = _int8_head(wte)
    with pytest.raises(ValueError, match="int8 head"):  # the checkpoint's (C, V) orientation is not the held one
        lm_head_decode(r, parts, w, b, QHead(head.q.T, head.scale), eps=1e-5)
    with pytest.raises(ValueError, match="int8 head"):
        lm_head_decode(r, parts, w, b, QHead(head.q, head.scale[:-1]), eps=1e-5)
