"""Loading a model onto a device and running its compiled forward.

``load_model`` picks the weights (checkpoint → HF cache → hub → random, loudly), builds the NNX model in the
compute dtype on the chosen device and splits it once into ``(graphdef, state)``. ``Engine.last_logits`` pads
prompts on the right to a shape bucket and calls a forward compiled ahead of time per (bucket, batch): a new
prompt length inside a known bucket never recompiles, and compile time is kept apart from run time.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgpt import weights as W
from jaxgpt.config import GPTConfig
from jaxgpt.errors import UsageError
from jaxgpt.ops import get_ops

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
BACKENDS = ("xla", "pallas")
DEVICES = ("cpu", "gpu")


def resolve_dtype(name: str):
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str | None) -> jax.Device:
    """``cpu``, ``gpu`` or None (the best available)."""
    if name is None:
        return jax.devices()[0]
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    try:
        return jax.devices(name)[0]
    except RuntimeError:
        raise UsageError(f"--device {name}: no {name.upper()} is visible to jax "
                         f"(jax {jax.__version__}, backends: {jax.default_backend()})") from None


def bucket_length(t: int, n_ctx: int) -> int:
    """Smallest bucket >= t: powers of two from 8, capped at n_ctx."""
    b = 8
    while b < t:
        b *= 2
    return min(b, n_ctx)


@dataclasses.dataclass
class Timings:
    compile_s: float = 0.0
    run_s: float = 0.0
    compiles: int = 0


def _forward(graphdef, backend, state, ids, last):
    model = nnx.merge(graphdef, state)
    return model(ids, last, get_ops(backend))  # (B, V) float32


class Engine:
    """A model on one device, ready to run: ``(graphdef, state)`` plus compiled forwards per shape bucket."""

    def __init__(self, cfg: GPTConfig, state_dict: dict[str, np.ndarray], *, dtype: str = "float32",
                 device: jax.Device | None = None, backend: str = "xla", source: str = "", random: bool = False):
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.config, self.dtype_name, self.backend = cfg, dtype, backend
        self.dtype = resolve_dtype(dtype)
        self.device = device or jax.devices()[0]
        self.source, self.random = source, random
        get_ops(backend)  # import the backend now: a missing dependency fails here, not inside jit
        with jax.default_device(self.device):
            model = W.build_model(cfg, state_dict, self.dtype)
        self.graphdef, state = nnx.split(model)
        self.state = jax.device_put(state, self.device)
        self.timings = Timings()
        self._compiled: dict[tuple, object] = {}
        self.hooks: dict[tuple, object] = {}  # host callbacks held by compiled generation loops

    def aot(self, key: tuple, fn, *static, args: tuple, donate: tuple[int, ...] = ()):
        """``fn(*static, state, *args)`` compiled ahead of time for the abstract ``args``, once per ``key``.

        ``donate`` indexes ``args`` (0 is the first after ``state``); compile time goes to ``timings``.
        """
        if key not in self._compiled:
            t0 = time.perf_counter()
            fn = jax.jit(functools.partial(fn, *static), donate_argnums=tuple(1 + d for d in donate))
            self._compiled[key] = fn.lower(self.state, *args).compile()
            self.timings.compile_s += time.perf_counter() - t0
            self.timings.compiles += 1
        return self._compiled[key]

    def compiled(self, batch: int, length: int):
        """The forward for ``batch`` rows padded to ``length``: (state, ids (B, T), last (B,)) -> (B, V)."""
        return self.aot(("forward", batch, length), _forward, self.graphdef, self.backend,
                        args=(jax.ShapeDtypeStruct((batch, length), jnp.int32),
                              jax.ShapeDtypeStruct((batch,), jnp.int32)))

    def check_ids(self, rows: list[list[int]]) -> None:
        if not rows:
            raise UsageError("no prompts given")
        for ids in rows:
            if not ids:
                raise UsageError("empty prompt: it encodes to no tokens")
            if len(ids) > self.config.n_ctx:
                raise UsageError(f"prompt is {len(ids)} tokens, longer than the context of "
                                 f"{self.config.n_ctx} (n_ctx)")
            bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
            if bad:
                raise UsageError(f"token id {bad[0]} is outside the vocabulary of {self.config.vocab_size}")

    def last_logits(self, rows: list[list[int]]) -> np.ndarray:
        """Float32 logits after the last token of each row: rows of ids (ragged) -> (B, V) numpy."""
        self.check_ids(rows)
        length = bucket_length(max(map(len, rows)), self.config.n_ctx)
        ids = np.zeros((len(rows), length), np.int32)  # right padding never reaches real positions (causal)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = row
        last = np.array([len(row) - 1 for row in rows], np.int32)
        fn = self.compiled(len(rows), length)
        t0 = time.perf_counter()
        out = fn(self.state, jax.device_put(ids, self.device), jax.device_put(last, self.device))
        out = np.asarray(jax.block_until_ready(out))
        self.timings.run_s += time.perf_counter() - t0
        return out


def notice(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_weights(model: str | None = "gpt2", checkpoint: str | Path | None = None,
                 config: GPTConfig | str | Path | None = None, seed: int = 0,
                 allow_download: bool | None = None) -> tuple[GPTConfig, dict[str, np.ndarray], str, bool]:
    """``(config, float32 state dict, source description, is_random)`` in the documented order.

    ``config``: a ``GPTConfig``, a path to an HF ``config.json``, or None (from the checkpoint or ``model``).
    """
    try:
        preset = GPTConfig.from_name(model) if model is not None else None
        cfg = GPTConfig.from_json(config) if isinstance(config, (str, Path)) else config
    except ValueError as e:
        raise UsageError(str(e)) from None
    if checkpoint is not None:
        cfg, sd = W.load_checkpoint(checkpoint, cfg or preset)
        return cfg, sd, str(checkpoint), False
    if cfg is None:
        cfg = preset or GPTConfig.from_name("gpt2")
        found = W.find_pretrained(model or "gpt2", allow_download=allow_download)
        if found is not None:
            cfg, sd = W.load_checkpoint(found, cfg)
            return cfg, sd, f"{model or 'gpt2'} ({found})", False
    name = model or ("custom" if config is not None else "gpt2")
    desc = f"{name}, random weights (seed {seed})"
    notice(f"WARNING: no weights found for {name}: using random weights (seed {seed}); "
           "the output is meaningless. Pass --checkpoint PATH or put the model in the HF cache.")
    return cfg, W.random_state_dict(cfg, seed), desc, True


def load_model(model: str | None = "gpt2", *, checkpoint: str | Path | None = None,
               config: GPTConfig | str | Path | None = None, dtype: str = "float32", device: str | None = None,
               backend: str = "xla", seed: int = 0, allow_download: bool | None = None) -> Engine:
    """Load GPT-2 weights (see ``load_weights``) onto ``device`` as an ``Engine``.

    >>> engine = load_model("gpt2", dtype="bfloat16")
    >>> jaxgpt.predict(engine, "Dobby is").next_token
    """
    jdev = resolve_device(device)
    resolve_dtype(dtype)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    cfg, sd, source, random = load_weights(model, checkpoint, config, seed, allow_download)
    return Engine(cfg, sd, dtype=dtype, device=jdev, backend=backend, source=source, random=random)
