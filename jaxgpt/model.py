"""GPT-2 in Flax NNX, inference only.

Parameter names and layouts follow the HF ``GPT2LMHeadModel`` checkpoint (``wte, wpe, h[i].ln_1, attn.c_attn,
attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f``; linear weights stored ``(in, out)`` like HF's Conv1D), so loading
is a near-identity map. Every tensor op goes through an ``ops`` backend (``jaxgpt.ops``): the model never imports
a kernel, and one forward serves the XLA and Pallas backends alike.

One forward serves three uses: a plain prefill (``__call__``, for prediction), a prefill that also writes every
position's keys and values into a ``KVCache`` (``prefill``), and a one-token decode step that appends to the cache
and attends over it (``decode``). The cache is an explicit pytree of per-layer ``(B, S, H, D)`` arrays, so a jitted
caller can donate it and XLA updates it in place.

The residual stream is carried as ``(residual, normed)``: each block adds its sublayer output to the residual and
normalises it for the next sublayer in one ``ops.add_layer_norm`` call, so a fused residual+LayerNorm kernel can
serve every LayerNorm in the network (the last one is ``ln_f``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgpt.config import GPTConfig
from jaxgpt.ops import BlockParams, Ops


class KVCache(NamedTuple):
    """Keys and values of every layer: ``k[i]``, ``v[i]`` are (B, S, H, D), S the cache length.

    Row ``b``'s token at position ``p`` lives in slot ``p`` (rows are right-padded, so positions are the row's own);
    slots at or past a row's current length hold stale values that attention masks out.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @classmethod
    def zeros(cls, cfg: GPTConfig, batch: int, length: int, dtype) -> "KVCache":
        shape = (batch, length, cfg.n_head, cfg.n_embd // cfg.n_head)  # (B, S, H, D)
        return cls(tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layer)),
                   tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layer)))

    @property
    def length(self) -> int:
        return self.k[0].shape[1]


LayerKV = tuple[jax.Array, jax.Array] | None


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

    def kernel(self) -> jax.Array:
        """The (in, out) weight as the ops take it (``jaxgpt.quantize.QLinear`` returns a quantized one)."""
        return self.weight[...]


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

    def __call__(self, x: jax.Array, ops: Ops, kv: LayerKV = None,
                 pos: jax.Array | None = None) -> tuple[jax.Array, LayerKV]:
        """Causal self-attention. ``kv`` is this layer's cache: with ``pos`` None the T positions are written to
        slots ``[0, T)`` (prefill); with ``pos`` (B,) the one new token (T = 1) goes to slot ``pos[b]`` and attends
        to slots ``[0, pos[b]]`` (decode)."""
        B, T, C = x.shape
        qkv = ops.qkv(x, self.c_attn.kernel(), self.c_attn.bias[...], n_head=self.n_head)  # (B, T, 3, H, D)
        if pos is None:
            y = ops.attention(qkv)  # (B, T, H, D), causal
            if kv is not None:
                kv = tuple(jax.lax.dynamic_update_slice(c, qkv[:, :, j].astype(c.dtype), (0, 0, 0, 0))
                           for j, c in ((1, kv[0]), (2, kv[1])))  # slots [0, T) of (B, S, H, D)
        else:
            y, k_cache, v_cache = ops.decode_attention(qkv, kv[0], kv[1], pos)  # (B, H, D); caches (B, S, H, D)
            y, kv = y[:, None], (k_cache, v_cache)  # (B, 1, H, D)
        return ops.linear(y.reshape(B, T, C), self.c_proj.kernel(), self.c_proj.bias[...]), kv  # (B, T, C)


class MLP(nnx.Module):
    def __init__(self, cfg: GPTConfig, *, dtype, rngs: nnx.Rngs):
        c = cfg.n_embd
        self.c_fc = Linear(c, 4 * c, dtype=dtype, rngs=rngs)
        self.c_proj = Linear(4 * c, c, dtype=dtype, rngs=rngs, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    def __call__(self, x: jax.Array, ops: Ops) -> jax.Array:
        return ops.mlp(x, self.c_fc.kernel(), self.c_fc.bias[...],
                       self.c_proj.kernel(), self.c_proj.bias[...])  # (B, T, C)


class Block(nnx.Module):
    def __init__(self, cfg: GPTConfig, *, dtype, rngs: nnx.Rngs):
        eps = cfg.layer_norm_epsilon
        self.ln_1 = LayerNorm(cfg.n_embd, dtype=dtype, eps=eps)
        self.attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.ln_2 = LayerNorm(cfg.n_embd, dtype=dtype, eps=eps)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def params(self) -> BlockParams:
        a, m = self.attn, self.mlp
        return BlockParams(self.ln_1.weight[...], self.ln_1.bias[...], a.c_attn.kernel(), a.c_attn.bias[...],
                           a.c_proj.kernel(), a.c_proj.bias[...], self.ln_2.weight[...], self.ln_2.bias[...],
                           m.c_fc.kernel(), m.c_fc.bias[...], m.c_proj.kernel(), m.c_proj.bias[...])

    def __call__(self, residual: jax.Array, normed: jax.Array, next_ln: LayerNorm, ops: Ops,
                 kv: LayerKV = None, pos: jax.Array | None = None):
        """``normed`` is ``ln_1(residual)``; returns ``(residual', next_ln(residual'), kv')``."""
        a, kv = self.attn(normed, ops, kv, pos)  # (B, T, C)
        residual, normed = _add_ln(ops, a, residual, self.ln_2)  # residual += attn; normed = ln_2(residual)
        m = self.mlp(normed, ops)  # (B, T, C)
        return *_add_ln(ops, m, residual, next_ln), kv  # residual += mlp; normed = next_ln(residual)


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

    def head(self):
        """The LM head's weight as ``ops.lm_head`` takes it: ``wte`` (V, C), tied; or, when a quantized copy is
        installed as ``lm_head`` (``jaxgpt.quantize``), that copy: a ``QHead``, (V, C) int8 and a scale a row."""
        lm_head = getattr(self, "lm_head", None)
        return self.wte.weight[...] if lm_head is None else lm_head.kernel()

    def hidden_states(self, ids: jax.Array, ops: Ops) -> jax.Array:
        """Final hidden states ``ln_f(h_L)`` for every position: ids (B, T) -> (B, T, C)."""
        return self._run(ids, ops)[0]

    def _run(self, ids: jax.Array, ops: Ops, cache: KVCache | None = None,
             pos: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """The forward: final hidden states ``ln_f(h_L)`` (B, T, C) and the updated cache.

        ``pos`` None: the T tokens sit at positions ``0..T-1`` (prefill; written to ``cache`` if one is given).
        ``pos`` (B,): one token per row (T = 1) at position ``pos[b]``, attending over ``cache`` (decode).
        """
        x = self._embed(ids, pos)  # (B, T, C)
        lns = [blk.ln_1 for blk in self.h] + [self.ln_f]
        residual, normed = x, ops.layer_norm(x, lns[0].weight[...], lns[0].bias[...], eps=lns[0].eps)
        ks, vs = [], []
        for i, blk in enumerate(self.h):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            residual, normed, kv = blk(residual, normed, lns[i + 1], ops, kv, pos)
            if kv is not None:
                ks.append(kv[0])
                vs.append(kv[1])
        return normed, (None if cache is None else KVCache(tuple(ks), tuple(vs)))  # (B, T, C), = ln_f(residual)

    def _embed(self, ids: jax.Array, pos: jax.Array | None) -> jax.Array:
        """Token plus position embeddings: ids (B, T) at positions ``0..T-1`` (``pos`` None) or ``pos[b]`` (T = 1)."""
        wte, wpe = self.wte.weight[...], self.wpe.weight[...]
        return wte[ids] + (wpe[:ids.shape[1]][None] if pos is None else wpe[pos][:, None])  # (B, T, C)

    def _logits_at(self, h: jax.Array, last: jax.Array, ops: Ops) -> jax.Array:
        h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # (B, C)
        return ops.lm_head(h_last, self.head())  # (B, V) float32

    def __call__(self, ids: jax.Array, last: jax.Array, ops: Ops) -> jax.Array:
        """Float32 logits at position ``last[b]`` of each row: ids (B, T), last (B,) -> (B, V).

        Rows may be right-padded past ``last``: attention is causal, so padding never reaches real positions.
        """
        return self._logits_at(self._run(ids, ops)[0], last, ops)

    def prefill(self, ids: jax.Array, last: jax.Array, cache: KVCache, ops: Ops) -> tuple[jax.Array, KVCache]:
        """Like ``__call__``, and writes the keys and values of positions ``0..T-1`` into ``cache`` (S >= T)."""
        h, cache = self._run(ids, ops, cache)  # (B, T, C)
        return self._logits_at(h, last, ops), cache

    def decode(self, tok: jax.Array, pos: jax.Array, cache: KVCache, ops: Ops) -> tuple[jax.Array, KVCache]:
        """One step: token ``tok[b]`` (B,) at position ``pos[b]`` -> float32 logits (B, V) and the cache with it.

        A backend may run each block's step as one op (``ops.block_decode``): the loop over blocks stays here, the
        block's own order inside that op; otherwise the step is the per-op forward of ``_run``."""
        cfg = self.config
        x = self._embed(tok[:, None], pos)  # (B, 1, C)
        blocks = [blk.params() for blk in self.h]
        if not ops.block_decode(x, blocks, n_head=cfg.n_head):
            h, cache = self._run(tok[:, None], ops, cache, pos)  # (B, 1, C)
            return ops.lm_head(h[:, 0], self.head()), cache  # (B, V) float32
        eps = cfg.layer_norm_epsilon
        carry = ops.decode_start(x, len(blocks), n_head=cfg.n_head)
        ks, vs = [], []
        for i, p in enumerate(blocks):
            carry, k, v = ops.decode_block(carry, p, cache.k[i], cache.v[i], pos, layer=i, n_head=cfg.n_head, eps=eps)
            ks.append(k)
            vs.append(v)
        logits = ops.decode_head(carry, self.ln_f.weight[...], self.ln_f.bias[...], self.head(), eps=eps)  # (B, V)
        return logits, KVCache(tuple(ks), tuple(vs))
