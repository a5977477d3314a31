"""GPT-2 weights: read checkpoints, map names, check shapes, build the model.

Everything funnels into one float32 numpy state dict in HF GPT-2 naming and HF's Conv1D layout (linear weights
``(in, out)``), which ``build_model`` turns into an NNX ``GPT`` in the compute dtype. Sources, in the order the CLI
tries them: a local checkpoint (file or HF model directory: ``model.safetensors``, sharded
``model.safetensors.index.json``, or ``pytorch_model.bin`` read with ``torch.load(weights_only=True)``), the local HF
cache, the hub when online, and last random weights (host numpy RNG, so the same seed gives the same weights on
any device). Checkpoint code is never executed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgpt.config import PRESETS, GPTConfig
from jaxgpt.errors import JaxGPTError
from jaxgpt.model import GPT

HF_REPOS = {name: [f"openai-community/{name}", name] for name in PRESETS}
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
        # weights_only=True: tensors and plain containers only, never pickled code.
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"cannot read checkpoint {path}: {first}") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # nanoGPT's ckpt.pt keeps the weights under "model"
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


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


def infer_config(raw: dict[str, np.ndarray], config_json: Path | None) -> GPTConfig:
    """Config of a checkpoint: its ``config.json`` if present, else the preset its shapes match."""
    if config_json is not None and config_json.is_file():
        return GPTConfig.from_json(config_json)
    names = {k.removeprefix("_orig_mod.").removeprefix("module.").removeprefix("transformer."): v
             for k, v in raw.items()}
    if "wte.weight" not in names or "wpe.weight" not in names:
        raise WeightsError("not a GPT-2 checkpoint: no wte.weight / wpe.weight tensors")
    vocab, c = names["wte.weight"].shape
    n_ctx = names["wpe.weight"].shape[0]
    n_layer = len({k.split(".")[1] for k in names if k.startswith("h.") and k.split(".")[1].isdigit()})
    for preset in PRESETS.values():
        if (preset.n_layer, preset.n_embd) == (n_layer, c):
            return GPTConfig(n_layer=n_layer, n_head=preset.n_head, n_embd=c, n_ctx=n_ctx, vocab_size=vocab)
    raise WeightsError(f"checkpoint has n_layer={n_layer}, n_embd={c}, which match no preset and it has no "
                       "config.json: pass --config with the head count")


def load_checkpoint(path: str | Path, cfg: GPTConfig | None = None) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """Read, map and check a checkpoint. ``cfg`` None: take it from config.json or the shapes.

    A directory with ``quantization.json`` is a quantized checkpoint (``jaxgpt quantize``): its state dict comes
    back quantized, checked against the scheme."""
    if Path(path).is_dir() and (Path(path) / "quantization.json").exists():
        from jaxgpt.quantize import read_quantized
        return read_quantized(path, cfg)
    raw = read_checkpoint(path)
    if not raw:
        raise WeightsError(f"checkpoint {path} holds no tensors")
    f = checkpoint_file(path)
    if cfg is None:
        cfg = infer_config(raw, f.parent / "config.json")
    return cfg, normalize_state_dict(raw, cfg, source=str(f))


def find_pretrained(name: str, *, allow_download: bool | None = None) -> Path | None:
    """Directory of a released model's weights in the HF cache (or fetched from the hub when online)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    if allow_download is None:
        allow_download = os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False")
    patterns = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
    for local_only in (True, False) if allow_download else (True,):
        for repo in HF_REPOS.get(name, [name]):
            try:
                d = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only))
            except Exception:  # not cached / offline / no such repo: try the next source
                continue
            if (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file():
                return d
    return None


def random_state_dict(cfg: GPTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights from a host RNG (same seed -> same weights on any device).

    GPT-2's init for matrices (normal 0.02; residual projections 0.02/sqrt(2·n_layer)), and, unlike GPT-2's
    zeros and ones, random biases and LayerNorm gains so that a dropped bias or gain shows in parity checks.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            value = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith("c_proj.weight"):
            value = (0.02 / (2 * cfg.n_layer) ** 0.5) * rng.standard_normal(shape, dtype=np.float32)
        else:
            value = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        out[name] = value.astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------- model <-> dict

def build_model(cfg: GPTConfig, state_dict: dict[str, np.ndarray], dtype=jnp.float32) -> GPT:
    """An NNX ``GPT`` holding ``state_dict`` (HF names, Conv1D layout) cast to ``dtype``.

    A quantized state dict (``jaxgpt.quantize``) gets ``QLinear`` projections holding its int8/int4 tensors as
    stored; everything else is cast to ``dtype``."""
    from jaxgpt import quantize as Q
    model = nnx.eval_shape(lambda: GPT(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    scheme = Q.scheme_of(state_dict, cfg)
    if scheme is not None:
        Q.install(model, state_dict, scheme, dtype)
    for name, value in state_dict.items():
        if scheme is not None and name.endswith((".weight", ".scale", ".bias")) and \
                name.rsplit(".", 1)[0].endswith((*Q.LINEARS, "lm_head")):
            continue  # installed above
        _param(model, name).set_value(jnp.asarray(value, dtype=dtype))
    return model


def export_state_dict(model: GPT) -> dict[str, np.ndarray]:
    """The model's weights as float32 numpy arrays under HF names (Conv1D layout)."""
    return {name: np.asarray(_param(model, name).get_value(), dtype=np.float32)
            for name in expected_shapes(model.config)}


def save_safetensors(state_dict: dict[str, np.ndarray], directory: str | Path, cfg: GPTConfig) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (an HF-style model directory)."""
    from safetensors.numpy import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    return d


def _param(model: GPT, name: str) -> nnx.Param:
    obj = model
    for part in name.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
