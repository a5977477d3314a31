"""Checks on a request that need the model's shape but never its weights.

The CLI runs them before anything loads, so a bad argument costs a fraction of a second rather than a model load;
the API runs the same ones later (``Engine.check_ids``, ``predict``, ``Sampling``), so both say the same thing.
``known_config`` is the config ``jaxgpt.engine.load_weights`` will end up with, as far as it can be told without
reading a tensor. This module imports no jax.
"""

from __future__ import annotations

from pathlib import Path

from jaxgpt.config import GPTConfig
from jaxgpt.errors import UsageError


def requested_config(model: str | None, config: "GPTConfig | str | Path | None"
                     ) -> tuple[GPTConfig | None, GPTConfig | None]:
    """``(preset, config)`` a caller asked for: ``model`` a preset name or None, ``config`` a ``GPTConfig``, a path
    to an HF ``config.json`` or None. A bad name or an unreadable file is a ``UsageError``."""
    try:
        preset = GPTConfig.from_name(model) if model is not None else None
        cfg = GPTConfig.from_json(config) if isinstance(config, (str, Path)) else config
    except ValueError as e:
        raise UsageError(str(e)) from None
    return preset, cfg


def known_config(model: str | None = None, checkpoint: str | Path | None = None,
                 config: "GPTConfig | str | Path | None" = None) -> GPTConfig | None:
    """The config ``load_weights(model, checkpoint, config)`` will use, read without the weights: ``config``, else
    the preset ``model``, else the checkpoint's own (its ``config.json`` or its safetensors header), else ``gpt2``.
    None when only the tensors would tell (a ``.bin`` file without ``config.json``, an unreadable checkpoint:
    loading it reports the problem)."""
    preset, cfg = requested_config(model, config)
    if cfg is not None or preset is not None:
        return cfg or preset
    if checkpoint is not None:
        from jaxgpt.checkpoint import checkpoint_config
        return checkpoint_config(checkpoint)
    return GPTConfig.from_name("gpt2")


def check_top_k(k: int, vocab_size: int | None = None) -> None:
    """``k`` candidates to list: an integer in ``1..vocab_size`` (only ``>= 1`` when the vocabulary is unknown)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or (vocab_size is not None and k > vocab_size):
        bound = "an integer >= 1" if vocab_size is None else f"an integer in 1..{vocab_size} (the vocabulary)"
        raise UsageError(f"top-k={k!r} must be {bound}")


def check_sampling(temperature: float, top_k: int, top_p: float, vocab_size: int | None = None) -> None:
    """Sampling settings: ``temperature`` finite and >= 0 (0 = greedy), ``top_k`` in ``0..vocab_size`` (0 = off),
    ``top_p`` in (0, 1] (1 = off)."""
    if not (temperature >= 0.0) or temperature == float("inf"):
        raise UsageError(f"temperature {temperature} must be a finite number >= 0 (0 = greedy)")
    if top_k < 0:
        raise UsageError(f"top-k {top_k} must be >= 0 (0 = off)")
    if vocab_size is not None and top_k > vocab_size:
        raise UsageError(f"top-k {top_k} is above the vocabulary of {vocab_size} (0 = off)")
    if not (0.0 < top_p <= 1.0):
        raise UsageError(f"top-p {top_p} must be in (0, 1] (1 = off)")


def check_ids(rows: list[list[int]], cfg: GPTConfig) -> None:
    """Token-id rows a model of shape ``cfg`` can take: at least one row, none empty, none past the context, every id
    inside the vocabulary."""
    if not rows:
        raise UsageError("no prompts given")
    for ids in rows:
        if not ids:
            raise UsageError("empty prompt: it encodes to no tokens")
        if len(ids) > cfg.n_ctx:
            raise UsageError(f"prompt is {len(ids)} tokens, longer than the context of {cfg.n_ctx} (n_ctx)")
        bad = [i for i in ids if not 0 <= i < cfg.vocab_size]
        if bad:
            raise UsageError(f"token id {bad[0]} is outside the vocabulary of {cfg.vocab_size}")


def check_new_tokens(rows: list[list[int]], max_new_tokens: int, n_ctx: int) -> None:
    """The longest row plus ``max_new_tokens`` must fit the context (``jaxgpt.generate`` checks the same)."""
    longest = max(map(len, rows))
    if longest + max_new_tokens > n_ctx:
        raise UsageError(f"prompt of {longest} tokens + max-new-tokens {max_new_tokens} = "
                         f"{longest + max_new_tokens} is past the context of {n_ctx} (n_ctx)")
