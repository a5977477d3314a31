"""Every kernel lowers for CUDA through Triton, checked on a CPU.

Interpret mode proves the algorithm; it does not run the Pallas→Triton lowering, which is where a kernel that passes
on the CPU can still fail on the GPU (the fused decode step's first GPU run did: a select typed ``i1`` against ``f32``).
``lower(lowering_platforms=("cuda",))`` runs that lowering here, at GPT-2 shapes and in bf16, and checks that a
Triton call comes out. Triton's own compile to PTX still happens only on the GPU.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.decode_attention import decode_attention, decode_attention_append
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.layer_norm import add_layer_norm
from pallas_kernels.lm_head import LMHeadPlan, lm_head_decode
from pallas_kernels.matmul import matmul, matmul_split_k
from pallas_kernels.mlp import mlp
from pallas_kernels.partials import SplitK
from pallas_kernels.quant_matmul import quant_matmul
from pallas_kernels.quant_format import QHead, QWeight, quantize

BF16 = jnp.bfloat16
C = 1600  # gpt2-xl: not a power of two, 25 heads


def S(*shape, dtype=BF16):
    return jax.ShapeDtypeStruct(shape, dtype)


def _q(bits):
    w = quantize(np.random.default_rng(bits).standard_normal((C, 4 * C)).astype(np.float32), bits=bits)
    return w.q, w.scale, (w.bits, w.group, w.k)


Q8, Q4 = _q(8), _q(4)

CASES = {
    "matmul_gelu": (lambda x, w, b: matmul(x, w, b, activation="gelu_tanh", interpret=False),
                    (S(64, C), S(C, 3 * C), S(3 * C))),
    "matmul_split_k": (lambda x, w, b: matmul_split_k(x, w, b, interpret=False).parts,
                       (S(1, C), S(C, 4 * C), S(4 * C))),
    "split_k_partials_prologue": (
        lambda x, w1, b1, w2, b2: matmul_split_k(matmul_split_k(x, w1, b1, activation="gelu_tanh", interpret=False),
                                                 w2, b2, interpret=False).parts,
        (S(8, C), S(C, 4 * C), S(4 * C), S(4 * C, C), S(C))),
    "add_layer_norm": (lambda x, r, w, b: add_layer_norm(x, r, w, b, interpret=False),
                       (S(8, 1, C), S(8, 1, C), S(C), S(C))),
    "add_layer_norm_partials": (
        lambda x, w1, b1, r, w, b: add_layer_norm(matmul_split_k(x, w1, b1, interpret=False), r, w, b,
                                                  interpret=False),
        (S(1, C), S(C, C), S(C), S(1, C), S(C), S(C))),
    "flash_attention": (lambda qkv: flash_attention(qkv, interpret=False), (S(2, 200, 3, 25, 64),)),
    "decode_attention": (lambda q, k, v, n: decode_attention(q, k, v, n, interpret=False),
                         (S(2, 25, 64), S(2, 512, 25, 64), S(2, 512, 25, 64), S(2, dtype=jnp.int32))),
    "decode_attention_append": (
        lambda x, w, b, k, v, p: decode_attention_append(matmul_split_k(x, w, b, interpret=False), k, v, p,
                                                         interpret=False),
        (S(2, C), S(C, 3 * C), S(3 * C), S(2, 512, 25, 64), S(2, 512, 25, 64), S(2, dtype=jnp.int32))),
    "mlp": (lambda x, w1, b1, w2, b2: mlp(x, w1, b1, w2, b2, interpret=False),
            (S(64, C), S(C, 4 * C), S(4 * C), S(4 * C, C), S(C))),
}
for name, (q, s, meta) in (("int8", Q8), ("int4", Q4)):
    for m in (1, 64):
        CASES[f"quant_matmul_{name}_m{m}"] = (
            lambda x, q, s, b, meta=meta: quant_matmul(x, QWeight(q, s, *meta), b, activation="gelu_tanh",
                                                       interpret=False),
            (S(m, C), q, s, S(4 * C)))


_HEAD = quantize(np.random.default_rng(0).standard_normal((C, 50257)).astype(np.float32), bits=8)
CASES["quant_lm_head_int8"] = (
    lambda h, q, s: quant_matmul(h, QWeight(q, s, 8, None, C), jnp.zeros((50257,), BF16), out_dtype=jnp.float32,
                                 interpret=False),
    (S(1, C), _HEAD.q, _HEAD.scale))

CASES["lm_head_decode"] = (
    lambda r, p, pb, w, b, wte: lm_head_decode(r, SplitK(p, pb, "none", jnp.dtype(BF16)), w, b, wte, eps=1e-5,
                                               plan=LMHeadPlan(programs=132), interpret=False),
    (S(1, C), S(8, 1, C, dtype=jnp.float32), S(C), S(C), S(C), S(50257, C)))

CASES["lm_head_decode_int8"] = (  # the int8 head held (V, C), as the model holds it
    lambda r, p, pb, w, b, q, s: lm_head_decode(r, SplitK(p, pb, "none", jnp.dtype(BF16)), w, b, QHead(q, s),
                                                eps=1e-5, plan=LMHeadPlan(programs=132), interpret=False),
    (S(1, C), S(8, 1, C, dtype=jnp.float32), S(C), S(C), S(C), S(50257, C, dtype=jnp.int8),
     S(50257, dtype=jnp.float32)))


@pytest.mark.parametrize("name", list(CASES))
def test_lowers_to_triton_for_cuda(name):
    fn, args = CASES[name]
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    calls = re.findall(r"custom_call @([\w$.]+)", text)
    assert calls and all("triton" in c for c in calls), calls


@pytest.mark.parametrize("block_kv,stages", [(64, 2), (128, 2), (256, 3)])
@pytest.mark.parametrize("shape", [(2, 256, 25), (1, 1024, 12)])
def test_mosaic_attention_lowers_for_cuda(shape, block_kv, stages):
    """The Mosaic GPU attention (wgmma, TMA, three warpgroups, named barriers) lowers with jax's Mosaic rules."""
    from pallas_kernels.flash_attention_mgpu import flash_attention_mgpu
    B, T, H = shape
    fn = functools.partial(flash_attention_mgpu, block_kv=block_kv, stages=stages, interpret=False)
    text = jax.jit(fn).trace(S(B, T, 3, H, 64)).lower(lowering_platforms=("cuda",)).as_text()
    calls = re.findall(r"custom_call @([\w$.]+)", text)
    assert calls and all("mosaic" in c for c in calls), calls


@pytest.mark.parametrize("m,k,n,activation,kw", [
    (8192, 768, 2304, "none", {}), (8192, 1600, 6400, "gelu_tanh", {}), (8192, 1600, 4800, "none", {}),
    (8192, 6400, 1600, "none", {"block_m": 128, "block_n": 64, "stages": 3}), (256, 768, 3072, "gelu_tanh", {}),
    (8192, 1600, 6400, "gelu_tanh", {"delay_release": True})])
def test_mosaic_matmul_lowers_for_cuda(m, k, n, activation, kw):
    """The Mosaic GPU prefill matmul (TMA ring, wgmma from SMEM, bias/GELU epilogue) lowers at GPT-2's shapes."""
    from pallas_kernels.matmul_mgpu import matmul_mgpu
    fn = functools.partial(matmul_mgpu, activation=activation, interpret=False, **kw)
    text = jax.jit(fn).trace(S(m, k), S(k, n), S(n)).lower(lowering_platforms=("cuda",)).as_text()
    calls = re.findall(r"custom_call @([\w$.]+)", text)
    assert calls and all("mosaic" in c for c in calls), calls
