"""``jaxgpt.kernels``: the one place that picks a kernel per op and shape, and what callers may force."""

import jax.numpy as jnp
import pytest

from jaxgpt import kernels
from jaxgpt.errors import UsageError
from jaxgpt.kernels import Kernels, choose_attention, choose_decode, choose_decode_ops, choose_head, choose_matmul


@pytest.fixture
def hopper(monkeypatch):
    """Pretend to be (or not to be) on a Hopper GPU: the hardware the rules read, not the choice."""
    def set_(on: bool):
        monkeypatch.setattr(kernels, "hopper", lambda: on)
        monkeypatch.setattr(kernels, "on_gpu", lambda: on)
    return set_


def test_parse_and_errors():
    assert Kernels.parse("decode=block, attention=triton") == Kernels(attention="triton", decode="block")
    assert Kernels.parse(None) == Kernels() and Kernels.parse({"head": "xla"}) == Kernels(head="xla")
    assert str(Kernels(decode="fused")) == "decode=fused" and str(Kernels()) == "auto"
    for bad, needle in (("decode=fast", "choose one of"), ("softmax=triton", "unknown op"), ("decode", "op=kernel")):
        with pytest.raises(UsageError, match=needle):
            Kernels.parse(bad)


@pytest.mark.parametrize("choice,on,dtype,d,want", [
    ("auto", True, "bfloat16", 64, "mosaic"), ("auto", False, "bfloat16", 64, "triton"),
    ("triton", True, "bfloat16", 64, "triton"), ("mosaic", False, "float16", 64, "mosaic"),
    ("auto", True, "float32", 64, "triton"), ("mosaic", True, "bfloat16", 32, "triton"), ("xla", True, "bfloat16", 64, "xla")])
def test_attention(hopper, choice, on, dtype, d, want):
    """Mosaic GPU attention on Hopper by default, Triton elsewhere; a forced Mosaic on a shape it cannot take runs
    Triton."""
    hopper(on)
    assert choose_attention(Kernels(attention=choice), head_dim=d, dtype=jnp.dtype(dtype)) == want


@pytest.mark.parametrize("choice,on,rows,act,want", [
    ("auto", True, 8192, "none", "xla"), ("auto", True, 128, "gelu_tanh", "xla"),
    ("auto", True, 8192, "gelu_tanh", "mosaic"), ("auto", True, 8100, "gelu_tanh", "triton"),
    ("auto", False, 8192, "none", "triton"), ("xla", False, 8, "gelu_tanh", "xla"),
    ("mosaic", False, 128, "none", "mosaic"), ("mosaic", True, 100, "none", "triton"),
    ("triton", True, 8192, "gelu_tanh", "triton")])
def test_matmul(hopper, choice, on, rows, act, want):
    """cuBLAS for prefill projections on Hopper, except GELU ones (c_fc) from OURS_GELU_ROWS rows, whose GELU our
    Mosaic GPU matmul fuses where its tiles fit (8100 rows do not: Triton); off Hopper Triton; a forced Mosaic
    that cannot tile the shape runs Triton."""
    hopper(on)
    got = choose_matmul(Kernels(matmul=choice), rows=rows, n=768, kdim=768, dtype=jnp.bfloat16,
                        w_dtype=jnp.bfloat16, activation=act)
    assert got == want


@pytest.mark.parametrize("choice,on,rows,width,d,quant,want", [
    ("auto", True, 1, 768, 64, None, "block"), ("auto", True, 1, 1600, 64, "int8", "block"),
    ("auto", True, 1, 768, 64, "int4", "unfused"), ("auto", True, 1, 1600, 64, "int4", "fused"),
    ("auto", True, 8, 768, 64, None, "fused"), ("auto", False, 1, 768, 64, None, "unfused"),
    ("auto", False, 1, 1600, 64, None, "fused"), ("auto", True, 1, 96, 48, None, "unfused"),
    ("block", False, 8, 1600, 64, None, "block"), ("block", True, 1, 768, 64, "int4", "unfused"),
    ("fused", True, 1, 768, 64, None, "fused"), ("unfused", True, 8, 1600, 64, None, "unfused"),
    ("auto", True, 17, 768, 64, None, "unfused"), ("block", True, 17, 768, 64, None, "unfused")])
def test_decode(hopper, choice, on, rows, width, d, quant, want):
    """One-kernel blocks for one-row decode on a GPU (float or int8), else fused unless one row at a narrow width;
    forcing ``block`` where it cannot run (int4, head_dim not a power of two, more than 16 rows) falls back."""
    hopper(on)
    assert choose_decode(Kernels(decode=choice), rows=rows, width=width, head_dim=d, quant=quant) == want


def test_decode_ops_and_head():
    assert choose_decode_ops(Kernels(), rows=1, width=768) == "unfused"
    assert choose_decode_ops(Kernels(decode="block"), rows=8, width=768) == "fused"  # the per-op fallback's rule
    assert choose_head(Kernels()) == "fused" and choose_head(Kernels(head="xla")) == "xla"


def test_xla_backend_refuses_a_kernel_choice():
    from jaxgpt.backends import get_ops
    with pytest.raises(UsageError, match="pallas"):
        get_ops("xla", "decode=block")
    with pytest.raises(UsageError, match="unknown backend"):
        get_ops("cuda")
