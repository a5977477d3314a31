"""jaxgpt against the PyTorch oracle (reference/) on random weights: logits, top-10, greedy tokens."""

import numpy as np
import pytest
import torch

from jaxgpt import random_state_dict
from jaxgpt.engine import Engine
from jaxgpt.parity import compare, reference_model
from tests.conftest import PARITY_CONFIGS, TINY


def _ragged_rows(rng, cfg, lengths):
    return [rng.integers(0, cfg.vocab_size, size=n).tolist() for n in lengths]


def _oracle_last(ref, rows):
    return np.stack([ref(torch.tensor([r]))[0, -1].numpy() for r in rows])


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_float32_logits_match_reference(name, rng):
    cfg = PARITY_CONFIGS[name]
    sd = random_state_dict(cfg, seed=7)
    engine = Engine(cfg, sd, dtype="float32")
    ref = reference_model(cfg, sd)
    # batch > 1 with ragged lengths (right padding), T=1 and T=n_ctx (the longest bucket) included.
    rows = _ragged_rows(rng, cfg, [1, 3, cfg.n_ctx - 1, cfg.n_ctx])
    got = engine.last_logits(rows)
    want = _oracle_last(ref, rows)
    assert np.all(np.isfinite(got))
    err = np.max(np.abs(got - want))
    assert err <= 1e-4, f"{name}: max |Δlogit| {err:.2e}"
    for g, w in zip(got, want):
        assert np.argsort(-g, kind="stable")[:10].tolist() == np.argsort(-w, kind="stable")[:10].tolist()
        assert int(np.argmax(g)) == int(np.argmax(w))


def test_every_position_matches_reference(rng):
    """Not only the last position: the hidden path through all layers at every position."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxgpt.ops import XlaOps
    cfg = PARITY_CONFIGS["h5_c80"]
    sd = random_state_dict(cfg, seed=3)
    engine = Engine(cfg, sd)
    model = nnx.merge(engine.graphdef, engine.state)
    ids = rng.integers(0, cfg.vocab_size, size=(2, 40))
    h = model.hidden_states(jnp.asarray(ids), XlaOps())
    got = np.asarray(XlaOps.lm_head(h.reshape(-1, cfg.n_embd), model.wte.weight[...])).reshape(2, 40, -1)
    want = reference_model(cfg, sd)(torch.tensor(ids)).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4


def test_bucketing_gives_the_same_logits_as_exact_length(rng):
    cfg = PARITY_CONFIGS["h5_c80"]
    engine = Engine(cfg, random_state_dict(cfg, seed=5))
    row = rng.integers(0, cfg.vocab_size, size=11).tolist()
    padded = engine.last_logits([row])  # bucket 16
    alone = engine.last_logits([row[:8]])  # bucket 8, a different compile
    assert engine.timings.compiles == 2
    ref = reference_model(cfg, random_state_dict(cfg, seed=5))
    np.testing.assert_allclose(padded[0], _oracle_last(ref, [row])[0], atol=1e-4)
    np.testing.assert_allclose(alone[0], _oracle_last(ref, [row[:8]])[0], atol=1e-4)
    engine.last_logits([row[:13]])  # same bucket as 11: no new compile
    assert engine.timings.compiles == 2


def test_repeated_call_is_bitwise_identical(rng):
    cfg = PARITY_CONFIGS["h25_c200"]
    engine = Engine(cfg, random_state_dict(cfg, seed=2))
    rows = _ragged_rows(rng, cfg, [5, 9])
    np.testing.assert_array_equal(engine.last_logits(rows), engine.last_logits(rows))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_greedy_generation_matches_reference(dtype):
    cfg = TINY
    sd = random_state_dict(cfg, seed=11)
    engine = Engine(cfg, sd, dtype=dtype)
    ref = reference_model(cfg, sd)
    lowp = reference_model(cfg, sd, dtype) if dtype != "float32" else None
    results = compare(engine, ref, ["Dobby is", "The quick brown fox"], steps=12, ref_lowp=lowp)
    for r in results:
        assert r.ok, r
        assert r.max_abs_diff <= r.tolerance
        if dtype == "float32":
            assert r.greedy_jax == r.greedy_ref and r.topk_jax == r.topk_ref


def test_parity_detects_a_wrong_model():
    """The check must be able to fail: perturb one weight of the jax side."""
    cfg = TINY
    sd = random_state_dict(cfg, seed=11)
    bad = dict(sd)
    bad["h.1.mlp.c_fc.bias"] = sd["h.1.mlp.c_fc.bias"] + 0.5
    results = compare(Engine(cfg, bad), reference_model(cfg, sd), ["Dobby is"], steps=0)
    assert not results[0].ok and results[0].max_abs_diff > results[0].tolerance
