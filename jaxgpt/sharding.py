"""Spreading an engine over devices: data parallel, tensor parallel (Megatron), both on a 2-D mesh, and pmap.

``shard(engine, data=..., tensor=...)`` puts the engine's weights on a ``Mesh`` with axes ``("data", "tensor")``
and makes every later compile (prediction, prefill, the decode loop) a sharded one; nothing else changes for the
caller, and the results equal one device's row for row.

* Data parallel (``tensor == 1``): the weights are replicated and each device runs the unmodified forward on its
  slice of the batch, inside ``jax.shard_map`` — per-device code, so the Pallas kernels run per shard as they do on
  one device. A batch that does not divide the device count is padded with dummy rows that are dropped again.
* Tensor parallel (``tensor > 1``, XLA backend): ``jax.jit`` with ``NamedSharding``s, Megatron's split — ``c_attn``
  and ``c_fc`` column-parallel, both ``c_proj`` row-parallel (XLA inserts the all-reduce), the KV cache split by
  heads — and the batch over ``data`` on a 2-D mesh. c_attn's columns are the packed ``[q | k | v]`` of HF GPT-2, so a
  contiguous split does not fall on head boundaries; XLA reshards the qkv activation to heads once a layer.
* ``pmap_last_logits``: the same prediction through ``jax.pmap``, one batch slice per local device.
* ``initialize_distributed``: ``jax.distributed.initialize`` from the usual environment variables, for a mesh over
  the devices of several processes or hosts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgpt.buckets import bucket_length, pad_rows, round_up
from jaxgpt.errors import UsageError

AXES = ("data", "tensor")

# Megatron split by HF parameter name (suffix of the state path): column-parallel in, row-parallel out.
_TENSOR_SPECS = {
    "attn.c_attn.weight": P(None, "tensor"), "attn.c_attn.bias": P("tensor"),
    "attn.c_proj.weight": P("tensor", None),
    "mlp.c_fc.weight": P(None, "tensor"), "mlp.c_fc.bias": P("tensor"),
    "mlp.c_proj.weight": P("tensor", None),
}


def param_spec(name: str, tensor: int) -> P:
    """The PartitionSpec of parameter ``name`` (HF dotted name); replicated unless tensor-parallel applies."""
    if tensor > 1:
        for suffix, spec in _TENSOR_SPECS.items():
            if name.endswith(suffix):
                return spec
    return P()


def _path_name(path) -> str:
    keys = []
    for k in path:
        k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        if k != "value":
            keys.append(str(k))
    return ".".join(keys)


class Layout:
    """A mesh and how the engine's arrays sit on it; ``Engine`` consults it for every compile and transfer."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.data = mesh.shape["data"]
        self.tensor = mesh.shape["tensor"]

    def __repr__(self) -> str:
        return f"Layout(data={self.data}, tensor={self.tensor}, devices={self.mesh.devices.size})"

    # Arrays are described by kind: "batch" (leading axis split over data), "rep" (replicated), "cache" (KV cache:
    # batch over data, heads over tensor).
    def spec(self, kind: str) -> P:
        if kind == "batch":
            return P("data")
        if kind == "cache":
            return P("data", None, "tensor", None) if self.tensor > 1 else P("data")
        if kind == "rep":
            return P()
        if kind == "steps":  # a per-shard loop count under shard_map; one global count under GSPMD
            return P("data") if self.tensor == 1 else P()
        raise ValueError(f"unknown array kind {kind!r}")

    def sharding(self, kind: str) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(kind))

    def state_shardings(self, state):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: NamedSharding(self.mesh, param_spec(_path_name(path), self.tensor)), state)

    def put(self, a, kind: str):
        """Host values -> global arrays. Every process passes the same whole value and keeps its own shards, so
        this works across processes (``make_array_from_callback``), not only on one host."""
        return self.place(a, jax.tree.map(lambda _: self.sharding(kind), a))

    @staticmethod
    def place(a, shardings):
        def one(x, sharding):
            if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # a key: place its raw data
                data = np.asarray(jax.random.key_data(x))
                raw = jax.make_array_from_callback(data.shape, sharding, lambda idx: data[idx])
                return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(x))
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
        return jax.tree.map(one, a, shardings)

    @staticmethod
    def fetch(x) -> np.ndarray:
        """A (possibly multi-process) array -> the whole value on every process's host."""
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(x)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def abstract(self, spec, kind: str):
        """``spec`` (a ShapeDtypeStruct pytree) with this layout's sharding for ``kind``."""
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.sharding(kind)), spec)

    def wrap(self, fn, kinds: Sequence[str], out_kinds):
        """``fn(state, *args)`` for this mesh: per-device ``shard_map`` for data parallel, GSPMD otherwise."""
        if self.tensor == 1:
            return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), *(self.spec(k) for k in kinds)),
                                 out_specs=jax.tree.map(self.spec, out_kinds), check_vma=False)
        return fn

    def out_shardings(self, out_kinds):
        if self.tensor == 1:
            return None
        return jax.tree.map(self.sharding, out_kinds)


def make_mesh(data: int | None = None, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "tensor")`` mesh; ``data`` None uses every device left after ``tensor``."""
    devices = list(jax.devices() if devices is None else devices)
    if tensor < 1:
        raise UsageError(f"--tensor-parallel {tensor} must be >= 1")
    if len(devices) % tensor:
        raise UsageError(f"--tensor-parallel {tensor} does not divide the {len(devices)} devices")
    data = len(devices) // tensor if data is None else data
    if data < 1 or data * tensor > len(devices):
        raise UsageError(f"a mesh of {data} x {tensor} devices needs {data * tensor}; {len(devices)} are visible")
    grid = np.array(devices[:data * tensor], dtype=object).reshape(data, tensor)
    return Mesh(grid, AXES)


def shard(engine, *, data: int | bool | None = True, tensor: int = 1, devices: Sequence[jax.Device] | None = None):
    """Spread ``engine`` over devices, in place, and return it.

    ``data``: True (all devices left after ``tensor``), an int, or False/1 for none; ``tensor``: the
    tensor-parallel degree (XLA backend; must divide ``n_head``). Compiled functions are dropped and rebuilt sharded.

    >>> jaxgpt.shard(engine, data=True)                 # every local device, batch split
    >>> jaxgpt.shard(engine, data=2, tensor=4)          # 2-D mesh
    """
    cfg = engine.config
    if tensor > 1:
        if cfg.n_head % tensor:
            raise UsageError(f"--tensor-parallel {tensor} does not divide n_head={cfg.n_head}: heads are split "
                             "evenly over the tensor axis")
        if engine.backend != "xla":
            raise UsageError("--tensor-parallel runs on the xla backend: the Pallas kernels are per-device code "
                             "(use --data-parallel with --backend pallas)")
        if getattr(engine, "quantization", None) is not None:
            raise UsageError("--tensor-parallel does not split quantized weights yet (int4 groups and per-channel "
                             "scales would need their own partition specs): use --data-parallel")
    n_data = None if data is True else (1 if data is False else int(data))
    layout = Layout(make_mesh(n_data, tensor, devices))
    engine.layout = layout
    engine.state = layout.place(engine.state, layout.state_shardings(engine.state))
    engine.device = layout.mesh.devices.flat[0]
    engine._compiled.clear()
    return engine


def pmap_last_logits(engine, rows: list[list[int]]) -> np.ndarray:
    """``Engine.last_logits`` through ``jax.pmap``: rows split over the local devices -> (B, V) float32."""
    from flax import nnx
    engine.check_ids(rows)
    devices = jax.local_devices()
    n_dev = len(devices)
    length = bucket_length(max(map(len, rows)), engine.config.n_ctx)
    B = round_up(len(rows), n_dev)
    ids, last = pad_rows(rows, B, length)
    key = ("pmap", n_dev, B, length)
    if key not in engine._compiled:
        graphdef, ops = engine.graphdef, engine.ops

        def fwd(state, ids, last):
            return nnx.merge(graphdef, state)(ids, last, ops)

        engine._compiled[key] = jax.pmap(fwd, in_axes=(None, 0, 0), devices=devices)
    out = engine._compiled[key](engine.state, ids.reshape(n_dev, B // n_dev, length),
                                last.reshape(n_dev, B // n_dev))
    return np.asarray(out).reshape(B, -1)[:len(rows)]


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` from arguments or ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``; afterwards ``jax.devices()`` lists every process's devices and ``shard`` spans them."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if coordinator is None or num_processes is None or process_id is None:
        raise UsageError("multi-process needs JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and "
                         "JAX_PROCESS_ID (or the same as arguments)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices across processes; GPUs use NCCL
    jax.distributed.initialize(coordinator, num_processes, process_id)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"{name}={v!r} must be an integer") from None

