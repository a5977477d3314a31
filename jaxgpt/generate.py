"""Generation: prefill the prompts into a KV cache, then decode every new token inside one compiled loop.

Two compiled functions per shape bucket, both ahead of time and cached on the ``Engine``:

* ``prefill`` (batch bucket, prompt bucket, cache bucket): the prompts, right-padded, run through
  ``GPT.prefill``, which writes every position's keys and values into a fresh ``KVCache``; the first new token
  is chosen from the logits at each row's last real position.
* ``decode`` (batch bucket, cache bucket): a ``lax.while_loop`` of ``GPT.decode`` steps and sampling that stops
  after ``max_new_tokens`` or when every row is done; the cache comes in donated, so XLA updates it in place.
  The loop runs ``DECODE_CHUNK`` steps an iteration (a ``fori_loop`` of static length), then single steps for the
  rest, so the ``while_loop``'s per-iteration cost on a GPU (its predicate checked between iterations) is paid once
  a chunk: H100, B=1, ms/token, same run: gpt2 0.411 -> 0.402, gpt2-xl 2.132 -> 2.114 (and gpt2-xl compiles in 8.0 s
  instead of 6.0). Rows done mid-chunk only record -1, as they would one step at a time.

Rows are right-padded, not left-padded: row ``b`` keeps its own positions ``0..len-1`` and its token ``t`` goes to
cache slot ``len + t``; the prefill is the plain causal forward (padding sits after every real position, so it is
never seen) and decode attention masks the slots at or past each row's length. Each row's tokens are therefore those
of the prompt run alone. Batches pad to a power of two with rows that start finished.

Streaming and stop strings need the host each step: the loop then calls back (``io_callback``) with the new tokens
and gets back which rows matched a stop string, so the loop still ends early. Without them the loop never leaves
the device.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from jaxgpt import tokenizer
from jaxgpt.buckets import bucket_length, round_up
from jaxgpt.engine import Engine
from jaxgpt.errors import UsageError
from jaxgpt.model import KVCache
from jaxgpt.sampling import Sampling, sample

EOS_ID = tokenizer.EOT_ID
DECODE_CHUNK = 16  # steps a decode-loop iteration runs (module docstring)
# Steps unrolled within a chunk's loop (``fori_loop(unroll=)``): each loop iteration costs a small condition kernel
# on the GPU (``set_while_condition``, ~2 µs). H100, gpt2-xl B=1, 2026-11-26, one run each: 1 / 2 / 4 unrolled
# 2.007 / 1.988 / 1.995 ms/token (loop kernel time 1.997 / 1.984 / 1.993).
DECODE_UNROLL = 4


@dataclasses.dataclass
class Generation:
    """One prompt's continuation. ``ids`` stop before the EOS token or stop string that ended it."""

    prompt: str | None
    prompt_ids: list[int]
    ids: list[int]
    text: str
    finish_reason: str  # "eos", "stop" (a stop string) or "length"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class GenerateResult:
    """The rows in input order, with timings (compile time is kept apart, on ``engine.timings``)."""

    rows: list[Generation]
    prefill_s: float
    decode_s: float
    decode_steps: int  # loop iterations: tokens per row after the first, at most

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Generation:
        return self.rows[i]

    def __iter__(self):
        return iter(self.rows)

    @property
    def new_tokens(self) -> int:
        return sum(len(r.ids) for r in self.rows)

    @property
    def tokens_per_s(self) -> float:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else 0.0

    @property
    def decode_ms_per_step(self) -> float:
        return 1e3 * self.decode_s / self.decode_steps if self.decode_steps else 0.0


# --------------------------------------------------------------------------------------------- compiled functions

def _prefill(graphdef, ops, cache_len: int, greedy: bool, state, ids, lengths, rows, key, temperature, top_k, top_p):
    model = nnx.merge(graphdef, state)
    B = ids.shape[0]
    cache = KVCache.zeros(model.config, B, cache_len, model.wte.weight.dtype)  # (B, S, H, D) per layer
    logits, cache = model.prefill(ids, lengths - 1, cache, ops)  # (B, V)
    tok = sample(logits, jax.random.fold_in(key, 0), temperature, top_k, top_p, rows, greedy=greedy)  # (B,)
    return tok, cache


def _decode(graphdef, ops, host: Callable | None, greedy: bool, state, cache: KVCache, tok, lengths, done, rows,
            max_new, key, eos, temperature, top_k, top_p):
    """Tokens 1..max_new-1 after the prefill's token 0: out (B, S) int32 with -1 after a row is done, the number
    of loop iterations (shape (1,): per shard when the batch is split over devices), and the cache (donated in,
    returned: XLA updates it in place)."""
    model = nnx.merge(graphdef, state)
    B, S = tok.shape[0], cache.length
    out = jnp.full((B, S), -1, jnp.int32).at[:, 0].set(jnp.where(done, -1, tok))  # (B, S)
    done = done | (tok == eos)
    if host is not None:
        done = done | io_callback(host, jax.ShapeDtypeStruct((B,), jnp.bool_), 0, out[:, 0], ordered=True)

    def step(c):
        i, tok, cache, out, done = c
        logits, cache = model.decode(tok, lengths + i - 1, cache, ops)  # token i-1 sits at slot len + i - 1
        nxt = sample(logits, jax.random.fold_in(key, i), temperature, top_k, top_p, rows, greedy=greedy)  # (B,)
        rec = jnp.where(done, -1, nxt)
        out = jax.lax.dynamic_update_slice(out, rec[:, None], (0, i))
        done = done | (nxt == eos)
        if host is not None:
            done = done | io_callback(host, jax.ShapeDtypeStruct((B,), jnp.bool_), i, rec, ordered=True)
        return i + 1, nxt, cache, out, done

    def steps(k: int, c):  # while a whole chunk of k steps fits below max_new and some row is still going
        return jax.lax.while_loop(lambda c: (c[0] + k <= max_new) & ~jnp.all(c[4]),
                                  lambda c: jax.lax.fori_loop(0, k, lambda _, c: step(c), c,
                                                              unroll=min(DECODE_UNROLL, k)) if k > 1 else step(c), c)

    c = (jnp.int32(1), tok, cache, out, done)
    if DECODE_CHUNK > 1:
        c = steps(DECODE_CHUNK, c)
    i, _, cache, out, _ = steps(1, c)
    return out, i[None], cache


class _HostHook:
    """The one Python callable a compiled loop holds; each call to ``generate`` points it at its own handler."""

    def __init__(self):
        self.handler: Callable[[int, np.ndarray], np.ndarray] | None = None

    def __call__(self, i, toks):
        return self.handler(int(i), np.asarray(toks))


def _compiled(engine: Engine, batch: int, prompt_len: int, cache_len: int, hooked: bool, greedy: bool):
    """The prefill and decode functions for a shape bucket, compiled once each; ``greedy`` (static: a greedy loop
    never sorts the vocabulary) is part of their key."""
    scalars = [jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32),
               jax.ShapeDtypeStruct((), jnp.float32)]
    key_spec = jax.eval_shape(lambda: jax.random.key(0))
    row_i32 = jax.ShapeDtypeStruct((batch,), jnp.int32)
    pre = engine.aot(("prefill", batch, prompt_len, cache_len, greedy), _prefill, engine.graphdef, engine.ops,
                     cache_len, greedy, args=(jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32), row_i32,
                                              row_i32, key_spec, *scalars),
                     kinds=("batch", "batch", "batch", "rep", "rep", "rep", "rep"), out_kinds=("batch", "cache"))
    cache_spec = jax.eval_shape(lambda: KVCache.zeros(engine.config, batch, cache_len, engine.dtype))
    hook = engine.hooks.setdefault((batch, cache_len), _HostHook()) if hooked else None
    dec = engine.aot(("decode", batch, cache_len, hooked, greedy), _decode, engine.graphdef, engine.ops, hook,
                     greedy, args=(cache_spec, row_i32, row_i32, jax.ShapeDtypeStruct((batch,), jnp.bool_),
                                   row_i32, jax.ShapeDtypeStruct((), jnp.int32), key_spec,
                                   jax.ShapeDtypeStruct((), jnp.int32), *scalars), donate=(0,),
                     kinds=("cache", "batch", "batch", "batch", "batch", "rep", "rep", "rep", "rep", "rep", "rep"),
                     out_kinds=("batch", "steps", "cache"))
    return pre, dec, hook


# ------------------------------------------------------------------------------------------------ host side

class _Detok:
    """Incremental detokenizer for one row: emits only whole UTF-8 characters and holds back a possible stop."""

    def __init__(self, stops: Sequence[str]):
        self.ids: list[int] = []
        self.stops = [s for s in stops if s]
        self.emitted = 0  # characters of ``text`` already handed out
        self.text = ""
        self.stopped = False

    def push(self, tok: int) -> str:
        """Add one token; return the newly final text (possibly empty)."""
        if self.stopped:
            return ""
        self.ids.append(tok)
        raw = tokenizer.get_encoding().decode_bytes(self.ids)
        text = _complete_prefix(raw).decode("utf-8", "replace")  # a split character waits for its next token
        self.text = text
        end = len(text)
        for s in self.stops:
            at = text.find(s)
            if at >= 0:
                self.stopped, end = True, min(end, at)
        if self.stopped:
            self.text = text[:end]
        else:
            end -= max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        piece = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece


def _complete_prefix(raw: bytes) -> bytes:
    """``raw`` without a trailing UTF-8 character that is still missing bytes (at most 3 are held back)."""
    for back in range(1, min(3, len(raw)) + 1):
        b = raw[-back]
        if b & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return raw[:-back] if need > back else raw
    return raw


def _validate(engine: Engine, rows: list[list[int]], max_new_tokens: int) -> None:
    engine.check_ids(rows)
    n_ctx = engine.config.n_ctx
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise UsageError(f"max-new-tokens {max_new_tokens} must be an integer >= 1")
    longest = max(map(len, rows))
    if longest + max_new_tokens > n_ctx:
        raise UsageError(f"prompt of {longest} tokens + max-new-tokens {max_new_tokens} = "
                         f"{longest + max_new_tokens} is past the context of {n_ctx} (n_ctx)")


def generate(engine: Engine, prompts: str | Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 32,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop: Sequence[str] = (), stop_at_eos: bool = True,
             stream: Callable[[int, str], None] | None = None) -> GenerateResult:
    """Continue each prompt by up to ``max_new_tokens`` tokens, all prompts as one batch.

    ``prompts``: a string, a list of strings, or a list of token-id lists. ``temperature`` 0 (default) is greedy;
    ``top_k``/``top_p`` filter the sampled distribution; ``seed`` fixes the sampling. A row ends at
    ``<|endoftext|>`` (unless ``stop_at_eos`` is False), at any string in ``stop`` (the text is cut before it) or
    after ``max_new_tokens``. ``stream(row, text)`` receives each row's text as it is produced.

    >>> out = jaxgpt.generate(engine, ["Dobby is", "The cat"], max_new_tokens=20)
    >>> out[0].text, out.tokens_per_s
    """
    sampling = Sampling(float(temperature), int(top_k), float(top_p))
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise UsageError("no prompts given")
    texts: list[str | None]
    if all(isinstance(p, str) for p in prompts):
        if any(p == "" for p in prompts):
            raise UsageError("empty prompt: give some text to continue")
        texts, rows = list(prompts), [tokenizer.encode(p) for p in prompts]
    elif any(isinstance(p, str) for p in prompts):
        raise UsageError("prompts must be all strings or all token-id lists, not a mix")
    else:
        texts, rows = [None] * len(prompts), [[int(t) for t in p] for p in prompts]
    _validate(engine, rows, max_new_tokens)
    stop = [stop] if isinstance(stop, str) else list(stop)
    stops = [s for s in stop if s != tokenizer.EOT]
    stop_at_eos = stop_at_eos or len(stops) != len(stop)

    n = len(rows)
    batch = 1 << (n - 1).bit_length()  # batch bucket: a power of two (and a multiple of the data-parallel degree)
    batch = round_up(batch, engine.batch_multiple)
    prompt_len = bucket_length(max(map(len, rows)), engine.config.n_ctx)
    cache_len = bucket_length(max(map(len, rows)) + max_new_tokens, engine.config.n_ctx)
    # Host callbacks need the whole batch in one place: a sharded engine streams each row's text when it is done
    # and cuts stop strings afterwards (the loop then runs to max_new_tokens or EOS).
    hooked = (stream is not None or bool(stops)) and engine.layout is None
    pre, dec, hook = _compiled(engine, batch, prompt_len, cache_len, hooked, sampling.greedy)

    ids = np.zeros((batch, prompt_len), np.int32)
    lengths = np.ones((batch,), np.int32)
    for r, row in enumerate(rows):
        ids[r, :len(row)], lengths[r] = row, len(row)
    done = np.arange(batch) >= n  # padding rows start finished
    detoks = [_Detok(stops) for _ in range(n)]
    if hook is not None:
        def handler(i: int, toks: np.ndarray) -> np.ndarray:
            hit = np.zeros((batch,), bool)
            for r in range(n):
                t = int(toks[r])
                if t < 0 or (stop_at_eos and t == EOS_ID):
                    continue
                piece = detoks[r].push(t)
                if piece and stream is not None:
                    stream(r, piece)
                hit[r] = detoks[r].stopped
            return hit
        hook.handler = handler

    rep = functools.partial(engine.put, kind="rep")
    key = rep(jax.random.key(seed))
    params = [rep(a) for a in sampling.arrays()]
    row_ids = engine.put(np.arange(batch, dtype=np.int32))
    t0 = time.perf_counter()
    lengths_d = engine.put(lengths)
    tok, cache = pre(engine.state, engine.put(ids), lengths_d, row_ids, key, *params)
    jax.block_until_ready(tok)
    t1 = time.perf_counter()
    out, steps, _ = dec(engine.state, cache, tok, lengths_d, engine.put(done), row_ids,
                        rep(np.int32(max_new_tokens)), key, rep(np.int32(EOS_ID if stop_at_eos else -1)), *params)
    out, steps = engine.fetch(out), int(np.max(engine.fetch(steps)))
    t2 = time.perf_counter()
    engine.timings.run_s += t2 - t0

    result = []
    for r in range(n):
        gen, reason = [], "length"
        for t in out[r, :max_new_tokens].tolist():
            if t < 0:
                break
            if stop_at_eos and t == EOS_ID:
                reason = "eos"
                break
            gen.append(t)
        text = tokenizer.decode(gen)
        if stops:
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
                gen = _ids_before(gen, text)
        if stream is not None:  # whatever the loop could not hand out yet (all of it without callbacks)
            rest = text[detoks[r].emitted:] if hooked else text
            if rest:
                stream(r, rest)
        result.append(Generation(texts[r], rows[r], gen, text, reason))
    return GenerateResult(result, prefill_s=t1 - t0, decode_s=t2 - t1, decode_steps=steps - 1)


def _ids_before(ids: list[int], text: str) -> list[int]:
    """The longest prefix of ``ids`` whose text is a prefix of ``text`` (the tokens before a stop string)."""
    keep = []
    for t in ids:
        if not text.startswith(tokenizer.decode(keep + [t])):
            break
        keep.append(t)
    return keep
