import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.errors import UsageError
from jaxgpt.sampling import Sampling, filter_logits, sample


def _filter(logits, t=1.0, k=0, p=1.0):
    return np.asarray(filter_logits(jnp.asarray(logits, jnp.float32), jnp.float32(t), jnp.int32(k), jnp.float32(p)))


def test_top_k_keeps_exactly_the_k_best():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 500))
    out = _filter(logits, k=7)
    for row, kept in zip(logits, out):
        assert set(np.flatnonzero(np.isfinite(kept))) == set(np.argsort(-row)[:7])


def test_top_p_keeps_the_smallest_nucleus():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    logits = np.log(probs)
    assert np.isfinite(_filter(logits, p=0.5)).tolist() == [[True, False, False, False]]
    assert np.isfinite(_filter(logits, p=0.51)).tolist() == [[True, True, False, False]]
    assert np.isfinite(_filter(logits, p=0.9)).tolist() == [[True, True, True, False]]
    assert np.isfinite(_filter(logits, p=1.0)).all()
    assert np.isfinite(_filter(logits, p=1e-6)).tolist() == [[True, False, False, False]]  # the best always stays


def test_temperature_scales_and_top_k_and_top_p_combine():
    logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    np.testing.assert_allclose(_filter(logits, t=2.0), logits / 2.0, rtol=1e-6)
    assert np.isfinite(_filter(logits, k=3, p=0.6)).tolist() == [[True, True, False, False]]


def test_greedy_is_argmax_and_sampling_is_reproducible():
    sample_ = jax.jit(sample, static_argnames="greedy")
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((4, 1000)), jnp.float32)
    args = lambda t, k=0, p=1.0: (jnp.float32(t), jnp.int32(k), jnp.float32(p))  # noqa: E731
    key = jax.random.key(3)
    np.testing.assert_array_equal(sample_(logits, key, *args(0.0), greedy=True), np.argmax(logits, -1))
    a, b = sample_(logits, key, *args(1.0), greedy=False), sample_(logits, key, *args(1.0), greedy=False)
    np.testing.assert_array_equal(a, b)
    picks = np.stack([np.asarray(sample_(logits, jax.random.key(s), *args(1.0, 5), greedy=False))
                      for s in range(40)])
    top5 = np.argsort(-np.asarray(logits), -1)[:, :5]
    assert all(set(picks[:, r]) <= set(top5[r]) for r in range(4))
    assert len({tuple(p) for p in picks}) > 1  # different keys, different draws


def test_sampled_frequencies_follow_the_distribution():
    probs = np.array([0.6, 0.3, 0.1])
    logits = jnp.asarray(np.log(np.tile(probs, (4000, 1))), jnp.float32)
    draws = np.asarray(sample(logits, jax.random.key(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0),
                              greedy=False))
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(freq, probs, atol=0.03)


@pytest.mark.parametrize("kw,needle", [({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")},
                                       "temperature"), ({"top_k": -1}, "top-k"), ({"top_p": 0.0}, "top-p"),
                                       ({"top_p": 1.5}, "top-p")])
def test_bad_settings(kw, needle):
    with pytest.raises(UsageError, match=needle):
        Sampling(**kw)


def test_static_greedy_has_no_conditional():
    """A conditional in the decode loop costs a host round trip a step on a GPU (XLA reads its predicate back):
    neither program has one."""
    logits = jax.ShapeDtypeStruct((2, 50), jnp.float32)
    scal = (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.float32))
    key = jax.eval_shape(lambda: jax.random.key(0))
    text = lambda g: jax.jit(lambda l, k, t, kk, p: sample(l, k, t, kk, p, greedy=g)).lower(  # noqa: E731
        logits, key, *scal).as_text()
    branches = ("stablehlo.case", "stablehlo.if")  # how jax 0.10 / 0.11 lower lax.cond
    assert not any(b in text(True) or b in text(False) for b in branches)
