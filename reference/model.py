"""GPT-2 in plain PyTorch, written from the paper's description and OpenAI's released model (HF layout).

Deliberately straightforward: explicit attention with a materialised causal mask, float32 softmax, HF's Conv1D
weight layout ``(in, out)``, the LM head tied to ``wte``. It shares no code with jaxgpt, so agreement means
something.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference.weights import SIZES, CheckpointError, tensor_shapes


@dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_ctx: int = 1024
    vocab_size: int = 50257
    eps: float = 1e-5


class Conv1D(nn.Module):
    """y = x @ W + b with W stored (in, out), as OpenAI's and HF's GPT-2 checkpoints store it."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        hd = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(hd)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = scores.softmax(dim=-1).to(v.dtype)
        y = (probs @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class FeedForward(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = Conv1D(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        h = self.c_fc(x)
        # "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h.pow(3))))
        return self.c_proj(h)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the parameter dtype."""

    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = LayerNorm32(cfg.n_embd, eps=cfg.eps)
        self.attn = SelfAttention(cfg)
        self.ln_2 = LayerNorm32(cfg.n_embd, eps=cfg.eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = LayerNorm32(cfg.n_embd, eps=cfg.eps)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> float32 logits (B, T, V)."""
        T = ids.shape[1]
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence of {T} tokens exceeds n_ctx={self.cfg.n_ctx}")
        x = self.wte(ids) + self.wpe(torch.arange(T, device=ids.device))[None]
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        return x.float() @ self.wte.weight.float().T

    @torch.no_grad()
    def greedy(self, ids: list[int], steps: int) -> list[int]:
        """``steps`` greedy tokens after ``ids``, recomputing the whole sequence each step (no cache)."""
        seq = list(ids)
        dev = self.wte.weight.device
        for _ in range(steps):
            logits = self(torch.tensor([seq], device=dev))[0, -1]
            seq.append(int(logits.argmax()))
        return seq[len(ids):]

    @classmethod
    def from_state_dict(cls, cfg: GPT2Config, sd: dict, dtype=torch.float32) -> "GPT2":
        model = cls(cfg)
        tensors = {k: torch.as_tensor(v) for k, v in sd.items()}
        model.load_state_dict(tensors, strict=True)
        return model.to(dtype).eval()


def _read(path: Path) -> dict:
    """Raw tensors of a float checkpoint, names as stored. Never runs code from the file: safetensors, or
    ``torch.load(weights_only=True)``."""
    if path.is_dir():
        if (path / "quantization.json").exists():
            raise CheckpointError(f"{path} is a quantized checkpoint (jaxgpt quantize): the reference runs float "
                                  "weights only; give it the float checkpoint the quantized one was made from")
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            if (path / name).is_file():
                return _read(path / name)
        raise CheckpointError(f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.name.endswith(".index.json"):
            shards = set(json.loads(path.read_text())["weight_map"].values())
            return {k: v for s in sorted(shards) for k, v in _read(path.parent / s).items()}
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        with warnings.catch_warnings():  # (torch warns about pickle protocols on stderr)
            warnings.simplefilter("ignore")
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # unreadable, corrupt, or a pickle holding more than tensors
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"cannot read {path} with PyTorch's weights-only reader: it is not a checkpoint "
                                  "of tensors, or it holds pickled objects whose loading would run code "
                                  "(refused)") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    sd = sd.get("model", sd) if isinstance(sd, dict) and isinstance(sd.get("model"), dict) else sd
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return sd


def config_from_hf(d: dict) -> GPT2Config:
    """A ``GPT2Config`` from an HF ``config.json`` dict."""
    try:
        return GPT2Config(int(d["n_layer"]), int(d["n_head"]), int(d["n_embd"]),
                          int(d.get("n_positions", d.get("n_ctx", 1024))), int(d.get("vocab_size", 50257)),
                          float(d.get("layer_norm_epsilon", 1e-5)))
    except KeyError as e:
        raise CheckpointError(f"config has no {e.args[0]!r} field") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config has a field that is not a number ({e})") from None


def read_config(path: str | Path) -> GPT2Config:
    """A ``GPT2Config`` from an HF ``config.json`` file."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read config {path}: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"config {path} is not a JSON object")
    return config_from_hf(d)


def load_gpt2(path: str | Path, cfg: GPT2Config | None = None, dtype=torch.float32) -> GPT2:
    """Load an HF-layout or nanoGPT-layout (nn.Linear, ``transformer.`` prefix) float GPT-2 checkpoint. A problem
    with the file (missing, unreadable, quantized, wrong names or shapes) is a ``CheckpointError``."""
    path = Path(path)
    sd = {}
    for k, v in _read(path).items():
        k = k.replace("_orig_mod.", "").replace("transformer.", "")
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue
        if k.endswith(".scale"):
            raise CheckpointError(f"{path} is a quantized checkpoint (tensor {k!r}): the reference runs float "
                                  "weights only")
        sd[k] = v.float()
    for k in ("wte.weight", "wpe.weight", "h.0.attn.c_attn.weight"):
        if k not in sd:
            raise CheckpointError(f"{path}: not a GPT-2 checkpoint (no {k!r} tensor)")
    if cfg is None:
        conf = (path if path.is_dir() else path.parent) / "config.json"
        if conf.exists():
            cfg = read_config(conf)
        else:
            n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
            vocab, c = sd["wte.weight"].shape
            n_head = next((s[1] for s in SIZES.values() if s[0] == n_layer and s[2] == c), None)
            if n_head is None:
                raise CheckpointError(f"{path}: n_layer={n_layer}, n_embd={c} match no GPT-2 size and there is no "
                                      "config.json beside it")
            cfg = GPT2Config(n_layer, n_head, c, sd["wpe.weight"].shape[0], vocab)
    if sd["h.0.attn.c_attn.weight"].shape[0] == 3 * cfg.n_embd:  # nn.Linear layout: (out, in)
        for k in list(sd):
            if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                sd[k] = sd[k].T.contiguous()
    want = tensor_shapes(cfg.n_layer, cfg.n_embd, cfg.n_ctx, cfg.vocab_size)
    for k, shape in want.items():
        if k not in sd:
            raise CheckpointError(f"{path}: missing tensor {k!r} (expected shape {shape})")
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(sd[k].shape)}, expected {shape}")
    extra = sorted(set(sd) - set(want))
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]!r}")
    return GPT2.from_state_dict(cfg, sd, dtype)
