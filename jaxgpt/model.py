"""GPT-2 in Flax NNX, inference only.

Parameter names and layouts follow the HF ``GPT2LMHeadModel`` checkpoint (``wte, wpe, h[i].ln_1, attn.c_attn,
attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f``; linear weights stored ``(in, out)`` like HF's Conv1D), so loading
is a near-identity map. Every tensor op goes through an ``ops`` backend (``jaxgpt.ops``): the model never imports
a kernel, and one forward serves the XLA and Pallas backends alike.

The residual stream is carried as ``(residual, normed)``: each block adds its sublayer output to the residual and
normalises it for the next sublayer in one ``ops.add_layer_norm`` call, so a fused residual+LayerNorm kernel can
serve every LayerNorm in the network (the last one is ``ln_f``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgpt.config import GPTConfig
from jaxgpt.ops import Ops


class LayerNorm(nnx.Module):
    def __init__(self, n: int, *, dtype, eps: float):
        self.weight = nnx.Param(jnp.ones((n,), dtype))
        self.bias = nnx.Param(jnp.zeros((n,), dtype))
        self.eps = eps


class Linear(nnx.Module):
    """HF GPT-2's Conv1D: ``y = x @ weight + bias`` with ``weight`` stored ``(in, out)``."""

    def __init__(self, n_in: int, n_out: int, *, dtype, rngs: nnx.Rngs, std: float = 0.02):
        self.weight = nnx.Param((std * jax.random.normal(rngs.params(), (n_in, n_out))).astype(dtype))
        self.bias = nnx.Param(jnp.zeros((n_out,), dtype))


class Embedding(nnx.Module):
    def __init__(self, n: int, dim: int, *, dtype, rngs: nnx.Rngs, std: float):
        self.weight = nnx.Param((std * jax.random.normal(rngs.params(), (n, dim))).astype(dtype))


class Attention(nnx.Module):
    def __init__(self, cfg: GPTConfig, *, dtype, rngs: nnx.Rngs):
        c = cfg.n_embd
        self.n_head = cfg.n_head
        self.c_attn = Linear(c, 3 * c, dtype=dtype, rngs=rngs)
        # GPT-2 scales residual projections by 1/sqrt(2 * n_layer) at init.
        self.c_proj = Linear(c, c, dtype=dtype, rngs=rngs, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    def __call__(self, x: jax.Array, ops: Ops) -> jax.Array:
        B, T, C = x.shape
        qkv = ops.qkv(x, self.c_attn.weight[...], self.c_attn.bias[...], n_head=self.n_head)  # (B, T, 3, H, D)
        y = ops.attention(qkv)  # (B, T, H, D), causal
        return ops.linear(y.reshape(B, T, C), self.c_proj.weight[...], self.c_proj.bias[...])  # (B, T, C)


class MLP(nnx.Module):
    def __init__(self, cfg: GPTConfig, *, dtype, rngs: nnx.Rngs):
        c = cfg.n_embd
        self.c_fc = Linear(c, 4 * c, dtype=dtype, rngs=rngs)
        self.c_proj = Linear(4 * c, c, dtype=dtype, rngs=rngs, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    def __call__(self, x: jax.Array, ops: Ops) -> jax.Array:
        return ops.mlp(x, self.c_fc.weight[...], self.c_fc.bias[...],
                       self.c_proj.weight[...], self.c_proj.bias[...])  # (B, T, C)


class Block(nnx.Module):
    def __init__(self, cfg: GPTConfig, *, dtype, rngs: nnx.Rngs):
        eps = cfg.layer_norm_epsilon
        self.ln_1 = LayerNorm(cfg.n_embd, dtype=dtype, eps=eps)
        self.attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.ln_2 = LayerNorm(cfg.n_embd, dtype=dtype, eps=eps)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, residual: jax.Array, normed: jax.Array, next_ln: LayerNorm, ops: Ops):
        """``normed`` is ``ln_1(residual)``; returns ``(residual', next_ln(residual'))``."""
        a = self.attn(normed, ops)  # (B, T, C)
        residual, normed = _add_ln(ops, a, residual, self.ln_2)  # residual += attn; normed = ln_2(residual)
        m = self.mlp(normed, ops)  # (B, T, C)
        return _add_ln(ops, m, residual, next_ln)  # residual += mlp; normed = next_ln(residual)


def _add_ln(ops: Ops, x, residual, ln: LayerNorm):
    return ops.add_layer_norm(x, residual, ln.weight[...], ln.bias[...], eps=ln.eps)


class GPT(nnx.Module):
    """GPT-2 language model with the LM head tied to ``wte``."""

    def __init__(self, cfg: GPTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd, dtype=dtype, rngs=rngs, std=0.02)
        self.wpe = Embedding(cfg.n_ctx, cfg.n_embd, dtype=dtype, rngs=rngs, std=0.01)
        self.h = nnx.List([Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, dtype=dtype, eps=cfg.layer_norm_epsilon)

    def hidden_states(self, ids: jax.Array, ops: Ops) -> jax.Array:
        """Final hidden states ``ln_f(h_L)`` for every position: ids (B, T) -> (B, T, C)."""
        B, T = ids.shape
        wte = self.wte.weight[...]
        x = wte[ids] + self.wpe.weight[...][:T][None]  # (B, T, C)
        lns = [blk.ln_1 for blk in self.h] + [self.ln_f]
        residual, normed = x, ops.layer_norm(x, lns[0].weight[...], lns[0].bias[...], eps=lns[0].eps)
        for i, blk in enumerate(self.h):
            residual, normed = blk(residual, normed, lns[i + 1], ops)
        return normed  # (B, T, C), = ln_f(residual)

    def __call__(self, ids: jax.Array, last: jax.Array, ops: Ops) -> jax.Array:
        """Float32 logits at position ``last[b]`` of each row: ids (B, T), last (B,) -> (B, V).

        Rows may be right-padded past ``last``: attention is causal, so padding never reaches real positions.
        """
        h = self.hidden_states(ids, ops)  # (B, T, C)
        h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # (B, C)
        return ops.lm_head(h_last, self.wte.weight[...])  # (B, V) float32
