"""Every checkpoint format jaxgpt reads and writes: float (HF safetensors, sharded safetensors, ``pytorch_model.bin``,
nanoGPT) and quantized (``jaxgpt quantize`` directories).

Reading funnels into one numpy state dict in HF GPT-2 naming and HF's Conv1D layout (linear weights ``(in, out)``):
float32 for a float checkpoint; for a quantized one, the int8 / packed-int4 projections and their scales in
``pallas_kernels.quant_format``'s layouts, checked against the scheme in ``quantization.json``. Names and shapes
are checked and the first mismatch is named (``WeightsError``). Checkpoint code is never executed: safetensors
first, ``torch.load(weights_only=True)`` for ``.bin`` files. This module sits below both ``jaxgpt.weights``
(building a model) and ``jaxgpt.quantize`` (quantizing one) and imports neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import tempfile
import warnings
from pathlib import Path

import numpy as np

from jaxgpt.config import PRESETS, GPTConfig
from jaxgpt.errors import JaxGPTError, UsageError

# Linear weights: HF's Conv1D stores (in, out); nanoGPT / nn.Linear checkpoints store (out, in).
LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_PREFIXES = ("_orig_mod.", "module.", "transformer.")
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some checkpoints carry


class WeightsError(JaxGPTError, ValueError):
    """A checkpoint that cannot be used; the message names the file and the first problem."""


def expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """HF names and (Conv1D-layout) shapes of every parameter, in checkpoint order."""
    c = cfg.n_embd
    shapes = {"wte.weight": (cfg.vocab_size, c), "wpe.weight": (cfg.n_ctx, c)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes |= {p + "ln_1.weight": (c,), p + "ln_1.bias": (c,),
                   p + "attn.c_attn.weight": (c, 3 * c), p + "attn.c_attn.bias": (3 * c,),
                   p + "attn.c_proj.weight": (c, c), p + "attn.c_proj.bias": (c,),
                   p + "ln_2.weight": (c,), p + "ln_2.bias": (c,),
                   p + "mlp.c_fc.weight": (c, 4 * c), p + "mlp.c_fc.bias": (4 * c,),
                   p + "mlp.c_proj.weight": (4 * c, c), p + "mlp.c_proj.bias": (c,)}
    return shapes | {"ln_f.weight": (c,), "ln_f.bias": (c,)}


# ----------------------------------------------------------------------------------------------- reading files

def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        # bf16 tensors: numpy has no bfloat16 dtype in safetensors.numpy, read them through ml_dtypes.
        if "bfloat16" in str(e) or "BF16" in str(e):
            return _read_safetensors_bf16(path)
        raise WeightsError(f"cannot read checkpoint {path}: {e}") from None


def _read_safetensors_bf16(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open
    with safe_open(str(path), framework="flax") as f:  # jax arrays know bfloat16
        return {name: np.asarray(f.get_tensor(name), dtype=np.float32) for name in f.keys()}


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path} is a PyTorch file: reading it needs torch (pip install torch), "
                           "or convert it to safetensors") from None
    try:
        with warnings.catch_warnings():  # (torch warns about pickle protocols on stderr)
            warnings.simplefilter("ignore")
            # weights_only=True: tensors and plain containers only, never pickled code.
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise _unreadable_torch_file(path, str(e)) from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # nanoGPT's ckpt.pt keeps the weights under "model"
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def _unreadable_torch_file(path: Path, message: str) -> WeightsError:
    """Our own words for a file torch's weights-only reader refused: one that holds pickled Python objects (which
    could run code when loaded) is refused, with the one-line conversion for a file the user trusts; anything else
    cannot be read. Torch's advice to load it without that reader is not passed on."""
    if "Weights only load failed" not in message:
        first = (message.strip().splitlines() or ["unknown error"])[0]
        return WeightsError(f"cannot read checkpoint {path}: {first}")
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    obj = found.group(1) if found else _pickled_object(path)
    if obj is None:
        return WeightsError(f"cannot read checkpoint {path}: not a PyTorch checkpoint of tensors (neither "
                            "safetensors nor a pickle that PyTorch's weights-only reader accepts)")
    out = path.with_name("model.safetensors") if path.name == "pytorch_model.bin" else path.with_suffix(".safetensors")
    convert = ("python -c \"import sys, torch; from safetensors.torch import save_file; "
               "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=False); sd = sd.get('model', sd); "
               "save_file({k: v.detach().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, sys.argv[2])\" "
               f"{shlex.quote(str(path))} {shlex.quote(str(out))}")
    return WeightsError(f"refused {path}: it holds pickled Python objects besides tensors ({obj}), and loading those "
                        "runs code; jaxgpt never runs code from a checkpoint. If you trust where the file came from, "
                        f"convert it to safetensors once (that runs its code) and pass the result: {convert}")


def _pickled_object(path: Path) -> str | None:
    """The first Python object (``module.name``) a pickle file would import or call, found by reading its opcodes
    (``pickletools``: nothing is executed). None for a file that is not a pickle or calls nothing."""
    import pickletools
    calls = ("REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX")
    strings: list[str] = []
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if op.name in ("GLOBAL", "INST"):
                    return str(arg).replace(" ", ".")
                if op.name == "STACK_GLOBAL":
                    return ".".join(strings[-2:]) or "a Python object"
                if op.name in calls:
                    return "a Python object"
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle (pickletools raises ValueError and friends on bad opcodes)
        return None
    return None


def _read_index(path: Path) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"cannot read shard index {path}: {e!r}") from None
    out: dict[str, np.ndarray] = {}
    for shard in shards:
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise WeightsError(f"shard {shard_path} named in {path.name} is missing")
        out |= _read_safetensors(shard_path)
    return out


def checkpoint_file(path: str | Path) -> Path:
    """The weights file a checkpoint path stands for (a directory is searched in HF's order)."""
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            if (p / name).is_file():
                return p / name
        raise WeightsError(f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {p}")
    if not p.exists():
        raise WeightsError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise WeightsError(f"checkpoint is not a file or directory: {p}")
    return p


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Raw tensors of a checkpoint, names as stored."""
    f = checkpoint_file(path)
    if not os.access(f, os.R_OK):
        raise WeightsError(f"checkpoint is not readable: {f}")
    if f.name.endswith(".index.json"):
        return _read_index(f)
    with open(f, "rb") as fh:
        head = fh.read(8)
    if f.suffix == ".safetensors" or (len(head) == 8 and f.suffix not in (".bin", ".pt", ".pth")
                                      and not head.startswith(b"PK")):
        return _read_safetensors(f)
    return _read_torch_bin(f)


# ----------------------------------------------------------------------------------------------- names and shapes

def normalize_state_dict(raw: dict[str, np.ndarray], cfg: GPTConfig, *, source: str = "checkpoint"
                         ) -> dict[str, np.ndarray]:
    """Map a checkpoint's tensors to HF names, Conv1D layout and float32; check every name and shape."""
    sd: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        if name.endswith(_BUFFERS):
            continue
        sd[name] = value
    lm_head = sd.pop("lm_head.weight", None)
    want = expected_shapes(cfg)
    for name, shape in want.items():
        if name not in sd:
            raise WeightsError(f"{source}: missing tensor {name!r} (expected shape {shape})")
    for name in sd:
        if name not in want:
            raise WeightsError(f"{source}: unexpected tensor {name!r} for a {cfg.n_layer}-layer GPT-2")
    if lm_head is not None and tuple(lm_head.shape) != want["wte.weight"]:
        raise WeightsError(f"{source}: lm_head.weight has shape {tuple(lm_head.shape)}, "
                           f"expected {want['wte.weight']} (tied to wte)")
    # Layout: decided once from c_attn (never square), then applied to all four linear weights.
    c_attn = sd["h.0.attn.c_attn.weight"]
    transposed = tuple(c_attn.shape) == (3 * cfg.n_embd, cfg.n_embd)
    out = {}
    for name, shape in want.items():
        value = np.asarray(sd[name])
        if transposed and name.endswith(LINEAR_WEIGHTS):
            value = value.T
        if tuple(value.shape) != shape:
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(value.shape)}, expected {shape} "
                               f"for {cfg.describe()}")
        if not np.issubdtype(value.dtype, np.floating) and value.dtype.name not in ("bfloat16",):
            raise WeightsError(f"{source}: tensor {name!r} has dtype {value.dtype}, expected floating point")
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def infer_config(shapes: dict[str, tuple[int, ...]], config_json: Path | None) -> GPTConfig:
    """Config of a checkpoint: its ``config.json`` if present, else the preset its tensors' ``shapes`` match."""
    if config_json is not None and config_json.is_file():
        return GPTConfig.from_json(config_json)
    names = {k.removeprefix("_orig_mod.").removeprefix("module.").removeprefix("transformer."): tuple(v)
             for k, v in shapes.items()}
    if "wte.weight" not in names or "wpe.weight" not in names:
        raise WeightsError("not a GPT-2 checkpoint: no wte.weight / wpe.weight tensors")
    vocab, c = names["wte.weight"]
    n_ctx = names["wpe.weight"][0]
    n_layer = len({k.split(".")[1] for k in names if k.startswith("h.") and k.split(".")[1].isdigit()})
    for preset in PRESETS.values():
        if (preset.n_layer, preset.n_embd) == (n_layer, c):
            return GPTConfig(n_layer=n_layer, n_head=preset.n_head, n_embd=c, n_ctx=n_ctx, vocab_size=vocab)
    raise WeightsError(f"checkpoint has n_layer={n_layer}, n_embd={c}, which match no preset and it has no "
                       "config.json: pass --config with the head count")


def checkpoint_config(path: str | Path) -> GPTConfig | None:
    """The config ``load_checkpoint(path)`` will find, read without the tensors: ``config.json`` beside the weights,
    else the shapes in a safetensors header. None when only the tensors would tell (a ``.bin`` file without
    ``config.json``) or the checkpoint cannot be read (``load_checkpoint`` then says why)."""
    p = Path(path)
    try:
        if p.is_dir() and (p / "quantization.json").exists():
            return GPTConfig.from_json(p / "config.json")
        f = checkpoint_file(p)
        if (f.parent / "config.json").is_file():
            return GPTConfig.from_json(f.parent / "config.json")
        if f.suffix == ".safetensors":
            return infer_config(_safetensors_shapes(f), None)
    except (JaxGPTError, ValueError, OSError, KeyError, TypeError, AttributeError):
        return None
    return None


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header (an 8-byte length, then JSON), no tensor read."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 2 <= n <= 100 << 20:
            raise ValueError(f"{path}: no safetensors header")
        header = json.loads(fh.read(n))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def load_checkpoint(path: str | Path, cfg: GPTConfig | None = None) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """Read, map and check a checkpoint. ``cfg`` None: take it from config.json or the shapes.

    A directory with ``quantization.json`` is a quantized checkpoint (``jaxgpt quantize``): its state dict comes
    back quantized, checked against the scheme."""
    if Path(path).is_dir() and (Path(path) / "quantization.json").exists():
        return read_quantized(path, cfg)
    raw = read_checkpoint(path)
    if not raw:
        raise WeightsError(f"checkpoint {path} holds no tensors")
    f = checkpoint_file(path)
    if cfg is None:
        cfg = infer_config({k: v.shape for k, v in raw.items()}, f.parent / "config.json")
    return cfg, normalize_state_dict(raw, cfg, source=str(f))


def save_safetensors(state_dict: dict[str, np.ndarray], directory: str | Path, cfg: GPTConfig) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (an HF-style model directory)."""
    from safetensors.numpy import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    return d



# ----------------------------------------------------------------------------------------------- quantized

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
FORMAT = "jaxgpt-weight-only"


@dataclasses.dataclass(frozen=True)
class Scheme:
    """``bits`` 8 (per output channel) or 4 (group-wise along the input dimension, ``group`` rows a scale)."""

    bits: int
    group: int | None = None
    head: bool = False  # an int8 copy of the tied LM head as well

    @property
    def name(self) -> str:
        return f"int{self.bits}" + ("+head" if self.head else "")

    @classmethod
    def parse(cls, spec: "str | Scheme", group: int | None = None, head: bool = False) -> "Scheme":
        """``"int8"``, ``"int4"`` (group 128, or ``group``), either with ``"+head"`` (or ``head``), or a ``Scheme``."""
        if isinstance(spec, Scheme):
            return spec
        base, plus, rest = str(spec).partition("+")
        if plus and rest != "head":
            raise UsageError(f"unknown quantization {spec!r}: choose int8 or int4, optionally +head")
        head = head or bool(plus)
        if base == "int8":
            if group is not None:
                raise UsageError("int8 scales are per output channel: --group applies to int4 only")
            return cls(8, None, head)
        if base == "int4":
            from pallas_kernels.quant_format import DEFAULT_GROUP  # jnp only: no Pallas lowering
            g = DEFAULT_GROUP if group is None else group
            if g < 32 or g & (g - 1):
                raise UsageError(f"--group {g} must be a power of two >= 32")
            return cls(4, g, head)
        raise UsageError(f"unknown quantization {spec!r}: choose int8 or int4, optionally +head")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "bits": self.bits, "group_size": self.group,
                "scales": "per output channel" if self.bits == 8 else "per group of input rows",
                "symmetric": True, "quantized": [f"h.*.{n}.weight" for n in LINEARS]
                + (["lm_head.weight (int8 per vocab entry, (C, V))"] if self.head else []),
                "lm_head": "int8 copy" if self.head else "float, tied to wte",
                "float": ["wte", "wpe", "ln_*", "ln_f", "biases"]}


def is_quantized(state_dict: dict) -> bool:
    return any(k.endswith(".scale") for k in state_dict)


def scheme_of(state_dict: dict, cfg: GPTConfig) -> Scheme | None:
    """The scheme a quantized state dict's tensors are in (None for a float one); checks every projection."""
    if not is_quantized(state_dict):
        return None
    q = state_dict.get("h.0.attn.c_attn.weight")
    s = state_dict.get("h.0.attn.c_attn.scale")
    if q is None or s is None:
        raise UsageError("quantized state dict without h.0.attn.c_attn.weight / .scale")
    if np.dtype(q.dtype) == np.int8:
        scheme = Scheme(8)
    elif np.dtype(q.dtype) == np.uint8 and s.ndim == 2 and s.shape[0] > 0:
        try:
            scheme = Scheme.parse("int4", 2 * q.shape[0] // s.shape[0])
        except UsageError:
            raise WeightsError(f"h.0.attn.c_attn: packed int4 weight {q.shape} and scales {s.shape} give no valid "
                               "group size") from None
    else:
        raise UsageError(f"h.0.attn.c_attn.weight has dtype {q.dtype}: expected int8 or uint8 (packed int4)")
    if "lm_head.scale" in state_dict:
        scheme = dataclasses.replace(scheme, head=True)
    check_state_dict(state_dict, cfg, scheme)
    return scheme


def quantized_shapes(cfg: GPTConfig, scheme: Scheme) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every projection's ``weight`` and ``scale`` shape and dtype under ``scheme``."""
    c = cfg.n_embd
    dims = {"attn.c_attn": (c, 3 * c), "attn.c_proj": (c, c), "mlp.c_fc": (c, 4 * c), "mlp.c_proj": (4 * c, c)}
    out = {}
    for i in range(cfg.n_layer):
        for name, (k, n) in dims.items():
            p = f"h.{i}.{name}"
            if scheme.bits == 8:
                out[p + ".weight"], out[p + ".scale"] = ((k, n), np.dtype(np.int8)), ((1, n), np.dtype(np.float32))
            else:
                kp = -(-k // scheme.group) * scheme.group
                out[p + ".weight"] = ((kp // 2, n), np.dtype(np.uint8))
                out[p + ".scale"] = ((kp // scheme.group, n), np.dtype(np.float32))
    if scheme.head:
        out["lm_head.weight"] = ((c, cfg.vocab_size), np.dtype(np.int8))
        out["lm_head.scale"] = ((1, cfg.vocab_size), np.dtype(np.float32))
    return out


def check_state_dict(state_dict: dict, cfg: GPTConfig, scheme: Scheme, source: str = "quantized weights") -> None:
    """Every tensor present with its shape and dtype; the first mismatch is named (a ``WeightsError``)."""
    want = {k: (v, None) for k, v in expected_shapes(cfg).items()} | quantized_shapes(cfg, scheme)
    for name, (shape, dtype) in want.items():
        if name not in state_dict:
            raise WeightsError(f"{source}: missing tensor {name!r} (expected shape {shape})")
        v = state_dict[name]
        if tuple(v.shape) != tuple(shape):
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(v.shape)}, expected {tuple(shape)} "
                               f"for {scheme.name} {cfg.describe()}")
        if dtype is not None and np.dtype(v.dtype) != dtype:
            raise WeightsError(f"{source}: tensor {name!r} has dtype {v.dtype}, expected {dtype}")
        if name.endswith(".scale") and not (np.all(np.isfinite(v)) and np.all(np.asarray(v) > 0)):
            raise WeightsError(f"{source}: tensor {name!r} has scales that are not finite and positive")
    extra = sorted(set(state_dict) - set(want))
    if extra:
        raise WeightsError(f"{source}: unexpected tensor {extra[0]!r} for a {scheme.name} {cfg.n_layer}-layer GPT-2")


def save_quantized(state_dict: dict[str, np.ndarray], cfg: GPTConfig, directory: str | Path, *,
                   source: str | None = None, random: bool | None = None) -> Path:
    """Write ``model.safetensors`` (quantized tensors), ``quantization.json`` and ``config.json``. Every file is
    written aside first and renamed into place whole, so a failure never leaves a half-written file.

    ``source`` and ``random`` record where the float weights came from (``quantization.json``'s ``weights``, also
    in the safetensors metadata): a checkpoint quantized from random weights says so whenever it loads
    (``weights_provenance``)."""
    from safetensors.numpy import save_file
    scheme = scheme_of(state_dict, cfg)
    if scheme is None:
        raise UsageError("the state dict is not quantized")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = scheme.to_json()
    if source is not None or random is not None:
        meta["weights"] = {"source": source, "random": random}
    files = {"model.safetensors": None, "quantization.json": json.dumps(meta, indent=2) + "\n",
             "config.json": json.dumps(cfg.to_hf_dict(), indent=2) + "\n"}
    tmp = Path(tempfile.mkdtemp(prefix=".quantize-", dir=d))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "np", "quantization": scheme.name,
                            **({"weights": json.dumps(meta["weights"])} if "weights" in meta else {})})
        for name, text in files.items():
            if text is not None:
                (tmp / name).write_text(text)
        umask = os.umask(0)
        os.umask(umask)
        for name in files:
            os.chmod(tmp / name, 0o666 & ~umask)
            os.replace(tmp / name, d / name)
    finally:
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()
    return d


def weights_provenance(path: str | Path) -> dict | None:
    """Where a quantized checkpoint's float weights came from, as ``save_quantized`` recorded it:
    ``{"source": str | None, "random": bool | None}``; None for a float checkpoint or one that recorded nothing."""
    try:
        meta = json.loads((Path(path) / "quantization.json").read_text())
    except (OSError, ValueError):
        return None
    w = meta.get("weights") if isinstance(meta, dict) else None
    return w if isinstance(w, dict) else None


def read_quantized(directory: str | Path, cfg: GPTConfig | None = None) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """A quantized checkpoint directory -> (config, quantized state dict), every tensor and the scheme checked."""
    d = Path(directory)
    try:
        meta = json.loads((d / "quantization.json").read_text())
        bits, group = int(meta["bits"]), meta.get("group_size")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{d / 'quantization.json'}: unreadable ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{d / 'quantization.json'}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if cfg is None:
        if not (d / "config.json").is_file():
            raise WeightsError(f"{d}: a quantized checkpoint needs its config.json")
        cfg = GPTConfig.from_json(d / "config.json")
    try:
        scheme = Scheme.parse(f"int{bits}", group if bits == 4 else None, head=meta.get("lm_head") == "int8 copy")
    except UsageError as e:
        raise WeightsError(f"{d / 'quantization.json'}: {e}") from None
    sd = read_checkpoint(d)
    check_state_dict(sd, cfg, scheme, source=str(d))
    return cfg, sd
