"""The Pallas backend end to end: parity with the PyTorch reference and with the XLA backend."""

import numpy as np
import pytest

from jaxgpt import GPTConfig, random_state_dict
from jaxgpt.engine import Engine
from jaxgpt.parity import compare, reference_model
from tests.conftest import TINY

CONFIGS = {
    "h5_c80": GPTConfig(n_layer=2, n_head=5, n_embd=80, n_ctx=64, vocab_size=503),
    "h25_c400": GPTConfig(n_layer=1, n_head=25, n_embd=400, n_ctx=32, vocab_size=300),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pallas_matches_reference_and_xla(name):
    cfg = CONFIGS[name]
    sd = random_state_dict(cfg, seed=21)
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, cfg.vocab_size, size=n).tolist() for n in (1, 9, cfg.n_ctx)]
    pallas = Engine(cfg, sd, backend="pallas").last_logits(rows)
    xla = Engine(cfg, sd, backend="xla").last_logits(rows)
    import torch
    ref = reference_model(cfg, sd)
    want = np.stack([ref(torch.tensor([r]))[0, -1].numpy() for r in rows])
    assert np.all(np.isfinite(pallas))
    assert np.max(np.abs(pallas - want)) <= 1e-4
    assert np.max(np.abs(pallas - xla)) <= 1e-4
    for p, w in zip(pallas, want):
        assert np.argsort(-p)[:10].tolist() == np.argsort(-w)[:10].tolist()


@pytest.mark.slow  # (Pallas against the oracle: the test above; greedy on Pallas: test_generate)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_pallas_greedy_matches_reference(dtype):
    sd = random_state_dict(TINY, seed=11)
    engine = Engine(TINY, sd, dtype=dtype, backend="pallas")
    lowp = reference_model(TINY, sd, dtype) if dtype != "float32" else None
    for r in compare(engine, reference_model(TINY, sd), ["Dobby is"], steps=6, ref_lowp=lowp):
        assert r.ok, r


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
def test_gpu_pallas_parity_full_size(model):
    cfg = GPTConfig.from_name(model)
    sd = random_state_dict(cfg, seed=0)
    for dtype in ("float32", "bfloat16"):
        engine = Engine(cfg, sd, dtype=dtype, backend="pallas")
        lowp = reference_model(cfg, sd, dtype, "cuda") if dtype != "float32" else None
        res = compare(engine, reference_model(cfg, sd, "float32", "cuda"),
                      ["Dobby is", "The quick brown fox jumps over the lazy dog"], steps=4, ref_lowp=lowp)
        for r in res:
            print(model, dtype, r.max_abs_diff, r.tolerance)
            assert r.ok, r


def test_fused_decode_path_leaves_one_token_prefills_correct():
    """With the fused decode step forced, a T=1 forward that is not a decode step still finishes its split-K qkv."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxgpt.backends import get_ops
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=100)
    sd = random_state_dict(cfg, seed=1)
    engine = Engine(cfg, sd)
    model = nnx.merge(engine.graphdef, engine.state)
    ids, last = jnp.array([[5], [7]]), jnp.array([0, 0])
    got, want = model(ids, last, get_ops("pallas", "decode=fused")), model(ids, last, get_ops("xla"))
    assert np.all(np.isfinite(got)) and np.max(np.abs(np.asarray(got) - np.asarray(want))) <= 1e-5


@pytest.mark.slow  # (each Mosaic kernel alone: test_kernels_*_mgpu.py)
@pytest.mark.parametrize("what", ["matmul", "attention"])
def test_mosaic_kernels_serve_the_prefill(what, monkeypatch):
    """``attention=mosaic`` / ``matmul=mosaic`` (the default on Hopper): a bf16 prefill runs the Mosaic GPU
    attention, or the Mosaic GPU matmul for all four projections (their interpreter here), and gives the Triton
    kernels' logits."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxgpt.backends import get_ops
    from pallas_kernels import flash_attention_mgpu, matmul_mgpu
    mgpu, fn = (flash_attention_mgpu, "flash_attention_mgpu") if what == "attention" else (matmul_mgpu, "matmul_mgpu")
    cfg = GPTConfig(n_layer=1, n_head=3, n_embd=192, n_ctx=128, vocab_size=100)  # every projection's N tiles by 192
    engine = Engine(cfg, random_state_dict(cfg, seed=2), dtype="bfloat16")
    model = nnx.merge(engine.graphdef, engine.state)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 100, (1, 128)), jnp.int32)
    last = jnp.array([127])
    want = model(ids, last, get_ops("pallas", {what: "triton"}))
    calls = []
    real = getattr(mgpu, fn)
    monkeypatch.setattr(mgpu, fn, lambda *a, **k: calls.append(1) or real(*a, **k))
    got = model(ids, last, get_ops("pallas", {what: "mosaic"}))
    assert len(calls) == (1 if what == "attention" else 4) and np.all(np.isfinite(np.asarray(got)))
    assert np.max(np.abs(np.asarray(got) - np.asarray(want))) <= 0.01  # measured 1.4e-3; XLA vs Triton: 3e-3


def test_cublas_projections_are_the_xla_backends_ops():
    """Where the Pallas backend takes cuBLAS, its projections and MLP are the XLA backend's, bit for bit."""
    import jax.numpy as jnp

    from jaxgpt.backends import get_ops
    from jaxgpt.ops import XlaOps
    pallas = get_ops("pallas", "matmul=xla")
    rng = np.random.default_rng(3)
    n = lambda *s: jnp.asarray(rng.standard_normal(s) * 0.1, jnp.bfloat16)  # noqa: E731
    x, w_fc, b_fc, w_proj, b_proj = n(2, 40, 96), n(96, 384), n(384), n(384, 96), n(96)
    got, want = pallas.linear(x, w_fc, b_fc), XlaOps.linear(x, w_fc, b_fc)
    assert got.dtype == want.dtype and np.array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    got, want = pallas.mlp(x, w_fc, b_fc, w_proj, b_proj), XlaOps().mlp(x, w_fc, b_fc, w_proj, b_proj)
    assert np.isfinite(np.asarray(got, np.float32)).all()
    assert np.array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
