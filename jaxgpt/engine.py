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
from jaxgpt.backends import BACKENDS, get_ops
from jaxgpt.buckets import bucket_length, pad_rows, round_up
from jaxgpt.checkpoint import Scheme, load_checkpoint, scheme_of, weights_provenance
from jaxgpt.config import GPTConfig
from jaxgpt.errors import UsageError
from jaxgpt.kernels import Kernels
from jaxgpt.validation import check_ids, requested_config

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DEVICES = ("cpu", "gpu")


def resolve_dtype(name: str):
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str | None) -> jax.Device:
    """``cpu``, ``gpu`` or None (the best available)."""
    if name is None:
        return jax.local_devices()[0]
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    try:
        return jax.devices(name)[0]
    except RuntimeError:
        raise UsageError(f"--device {name}: no {name.upper()} is visible to jax "
                         f"(jax {jax.__version__}, backends: {jax.default_backend()})") from None


@dataclasses.dataclass
class Timings:
    compile_s: float = 0.0
    run_s: float = 0.0
    compiles: int = 0


def _forward(graphdef, ops, state, ids, last):
    model = nnx.merge(graphdef, state)
    return model(ids, last, ops)  # (B, V) float32


class Engine:
    """A model on one device, ready to run: ``(graphdef, state)``, its ops (backend and kernel choice) and
    compiled forwards per shape bucket."""

    def __init__(self, cfg: GPTConfig, state_dict: dict[str, np.ndarray], *, dtype: str = "float32",
                 device: jax.Device | None = None, backend: str = "xla", source: str = "", random: bool = False,
                 quantize: str | None = None, kernels: "Kernels | str | dict | None" = None):
        self.ops = get_ops(backend, kernels)  # imports the backend now: a missing dependency fails here, not in jit
        self.config, self.dtype_name, self.backend = cfg, dtype, backend
        self.dtype = resolve_dtype(dtype)
        self.device = device or jax.local_devices()[0]
        self.source, self.random = source, random
        have = scheme_of(state_dict, cfg)  # None for float weights
        if quantize is not None:
            scheme = Scheme.parse(quantize)
            if have is None:
                from jaxgpt.quantize import quantize_state_dict
                state_dict, have = quantize_state_dict(state_dict, cfg, scheme), scheme
            elif have != scheme:
                raise UsageError(f"the checkpoint is already quantized as {have.name} (group {have.group}); "
                                 f"cannot load it as {scheme.name}")
        self.quantization = have
        with jax.default_device(self.device):
            model = W.build_model(cfg, state_dict, self.dtype)
        self.graphdef, state = nnx.split(model)
        self.state = jax.device_put(state, self.device)
        self.timings = Timings()
        self._compiled: dict[tuple, object] = {}
        self.layout = None  # a jaxgpt.sharding.Layout once the engine is sharded over several devices

    @property
    def batch_multiple(self) -> int:
        """Batches are padded to a multiple of this (the data-parallel degree)."""
        return 1 if self.layout is None else self.layout.data

    def put(self, a, kind: str = "batch"):
        """Host array (or pytree) -> device(s): ``batch`` split over the data axis, ``rep`` replicated."""
        if self.layout is None:
            return jax.device_put(a, self.device)
        return self.layout.put(a, kind)

    def fetch(self, x) -> np.ndarray:
        """Device result -> numpy on this host (gathered from every process on a multi-process mesh)."""
        return np.asarray(x) if self.layout is None else self.layout.fetch(x)

    def aot(self, key: tuple, fn, *static, args: tuple, donate: tuple[int, ...] = (), kinds: tuple = (),
            out_kinds=None):
        """``fn(*static, state, *args)`` compiled ahead of time for the abstract ``args``, once per ``key``.

        ``donate`` indexes ``args`` (0 is the first after ``state``); compile time goes to ``timings``. On a sharded
        engine ``kinds``/``out_kinds`` say how each argument/output is laid out ("batch", "rep", "cache", "steps").
        """
        if key not in self._compiled:
            t0 = time.perf_counter()
            f = functools.partial(fn, *static)
            out_shardings = None
            if self.layout is not None:
                f = self.layout.wrap(f, kinds, out_kinds)
                args = tuple(self.layout.abstract(a, k) for a, k in zip(args, kinds))
                out_shardings = self.layout.out_shardings(out_kinds)
            jitted = jax.jit(f, donate_argnums=tuple(1 + d for d in donate), out_shardings=out_shardings)
            self._compiled[key] = jitted.lower(self.state, *args).compile()
            self.timings.compile_s += time.perf_counter() - t0
            self.timings.compiles += 1
        return self._compiled[key]

    def compiled(self, batch: int, length: int):
        """The forward for ``batch`` rows padded to ``length``: (state, ids (B, T), last (B,)) -> (B, V)."""
        return self.aot(("forward", batch, length), _forward, self.graphdef, self.ops,
                        args=(jax.ShapeDtypeStruct((batch, length), jnp.int32),
                              jax.ShapeDtypeStruct((batch,), jnp.int32)), kinds=("batch", "batch"), out_kinds="batch")

    def check_ids(self, rows: list[list[int]]) -> None:
        """Rows this model can take (``jaxgpt.validation.check_ids``), else a ``UsageError``."""
        check_ids(rows, self.config)

    def last_logits(self, rows: list[list[int]]) -> np.ndarray:
        """Float32 logits after the last token of each row: rows of ids (ragged) -> (B, V) numpy."""
        self.check_ids(rows)
        length = bucket_length(max(map(len, rows)), self.config.n_ctx)
        batch = round_up(len(rows), self.batch_multiple)  # padding rows are dropped below
        ids, last = pad_rows(rows, batch, length)
        fn = self.compiled(batch, length)
        t0 = time.perf_counter()
        out = fn(self.state, self.put(ids), self.put(last))
        out = self.fetch(jax.block_until_ready(out))
        self.timings.run_s += time.perf_counter() - t0
        return out[:len(rows)]


def notice(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_weights(model: str | None = "gpt2", checkpoint: str | Path | None = None,
                 config: GPTConfig | str | Path | None = None, weights_seed: int = 0,
                 allow_download: bool | None = None) -> tuple[GPTConfig, dict[str, np.ndarray], str, bool]:
    """``(config, state dict, source description, is_random)`` in the documented order (float32, or quantized
    when the checkpoint is a ``jaxgpt quantize`` directory). Random weights, the last resort, come from
    ``jaxgpt.weights.random_state_dict(config, weights_seed)``.

    ``config``: a ``GPTConfig``, a path to an HF ``config.json``, or None (from the checkpoint or ``model``).
    """
    preset, cfg = requested_config(model, config)
    if checkpoint is not None:
        cfg, sd = load_checkpoint(checkpoint, cfg or preset)
        made_from = weights_provenance(checkpoint)  # a quantized checkpoint records its float weights' source
        if made_from and made_from.get("random"):
            notice(f"WARNING: {checkpoint} was quantized from random weights ({made_from.get('source')}); "
                   "the output is meaningless.")
            return cfg, sd, f"{checkpoint} (quantized from {made_from.get('source')})", True
        return cfg, sd, str(checkpoint), False
    if cfg is None:
        cfg = preset or GPTConfig.from_name("gpt2")
        found = W.find_pretrained(model or "gpt2", allow_download=allow_download)
        if found is not None:
            cfg, sd = load_checkpoint(found, cfg)
            return cfg, sd, f"{model or 'gpt2'} ({found})", False
    name = model or ("custom" if config is not None else "gpt2")
    desc = f"{name}, random weights (weights seed {weights_seed})"
    notice(f"WARNING: no weights found for {name}: using random weights (weights seed {weights_seed}); "
           "the output is meaningless. Pass --checkpoint PATH or put the model in the HF cache.")
    return cfg, W.random_state_dict(cfg, weights_seed), desc, True


def load_model(model: str | None = "gpt2", *, checkpoint: str | Path | None = None,
               config: GPTConfig | str | Path | None = None, dtype: str = "float32", device: str | None = None,
               backend: str = "xla", weights_seed: int = 0, allow_download: bool | None = None,
               data_parallel: bool | int = False, tensor_parallel: int = 1, quantize: str | None = None,
               kernels: "Kernels | str | dict | None" = None) -> Engine:
    """Load GPT-2 weights (see ``load_weights``) onto ``device`` as an ``Engine``.

    ``backend``: ``xla`` or ``pallas``; ``kernels`` (pallas only): which kernel runs each op, e.g.
    ``"decode=block,attention=triton"`` (``jaxgpt.kernels``; by default the measured rules pick).
    ``data_parallel`` (True: every device) / ``tensor_parallel`` (N) spread it over devices (``jaxgpt.shard``).
    ``quantize`` ("int8" / "int4") quantizes the projections on load (``jaxgpt.quantize``); a quantized checkpoint
    directory loads quantized without it. ``weights_seed`` picks the random weights used when none are found (the
    sampling seed is ``generate``'s ``seed``).

    >>> engine = load_model("gpt2", dtype="bfloat16")
    >>> jaxgpt.predict(engine, "Dobby is").next_token
    """
    jdev = resolve_device(device)
    resolve_dtype(dtype)
    get_ops(backend, kernels)  # a bad backend or kernel choice fails before the weights load
    cfg, sd, source, random = load_weights(model, checkpoint, config, weights_seed, allow_download)
    engine = Engine(cfg, sd, dtype=dtype, device=jdev, backend=backend, source=source, random=random,
                    quantize=quantize, kernels=kernels)
    if data_parallel or tensor_parallel > 1:
        from jaxgpt.sharding import shard
        devices = None if device is None else jax.devices(jdev.platform)
        shard(engine, data=data_parallel if data_parallel else 1, tensor=tensor_parallel, devices=devices)
    return engine
