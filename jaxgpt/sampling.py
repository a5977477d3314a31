"""Choosing the next token from float32 logits: greedy, or temperature / top-k / top-p sampling.

The settings are traced scalars, not static arguments, so one compiled decode loop serves every setting of its kind;
whether it is greedy (``temperature == 0``, never sorts the vocabulary) or sampled is static (``greedy=``): a
``lax.cond`` on the device would cost a host round trip a step.
Randomness comes only from the ``jax.random`` key the caller folds per step, so a seed gives the same tokens on
every run and platform (up to logits that differ across devices by rounding).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgpt.validation import check_sampling


@dataclasses.dataclass(frozen=True)
class Sampling:
    """``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1.0 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        return (jnp.float32(self.temperature), jnp.int32(self.top_k), jnp.float32(self.top_p))


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Scaled logits with everything outside the top-k and the top-p nucleus set to -inf: (B, V) -> (B, V).
    The settings are scalars or one per row, (B,).

    The nucleus is the smallest set of best tokens whose probability reaches ``top_p`` (the best token always
    stays); ties at a threshold are kept.
    """
    B, V = logits.shape
    temperature, top_k, top_p = (jnp.broadcast_to(a, (B,)) for a in (temperature, top_k, top_p))  # (B,) each
    x = logits.astype(jnp.float32) / temperature[:, None]  # (B, V)
    srt = -jnp.sort(-x, axis=-1)  # (B, V), best first
    kth = jnp.take_along_axis(srt, jnp.clip(top_k, 1, V)[:, None] - 1, axis=-1)[:, 0]  # (B,)
    kth = jnp.where(top_k > 0, kth, -jnp.inf)
    srt = jnp.where(srt >= kth[:, None], srt, -jnp.inf)
    probs = jax.nn.softmax(srt, axis=-1)  # (B, V)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly better tokens
    keep = (before < top_p[:, None]) | (jnp.arange(V) == 0)[None]
    p_min = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1)  # (B,) the worst token kept by top-p
    return jnp.where(x >= jnp.maximum(kth, p_min)[:, None], x, -jnp.inf)


def sample(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array, rows: jax.Array | None = None, *, greedy: bool) -> jax.Array:
    """Next token per row: (B, V) float32 logits -> (B,) int32.

    ``greedy`` (static) compiles only the argmax; otherwise row ``b`` draws with ``fold_in(key, rows[b])`` (``rows``
    defaults to ``0..B-1``): its token depends on the key and its row number only, not on the batch around it, so
    a batch split over devices samples the same tokens.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, temperature, top_k, top_p)  # (B, V)
    ids = jnp.arange(x.shape[0]) if rows is None else rows
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(ids)
    return jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, x).astype(jnp.int32)


def sample_rows(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
                top_p: jax.Array) -> jax.Array:
    """Next token per row with each row's own settings, all (B,): (B, V) float32 logits -> (B,) int32.

    Row ``b`` is greedy where ``temperature[b] == 0``, else it draws with ``keys[b]``; a row's token is the one
    ``sample`` gives it with the same key and settings (a server's mixed batch runs in one compiled step).
    """
    greedy = temperature <= 0.0  # (B,)
    x = filter_logits(logits, jnp.where(greedy, 1.0, temperature), top_k, top_p)  # (B, V)
    drawn = jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, x)  # (B,)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)
