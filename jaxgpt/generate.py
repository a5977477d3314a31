"""Generation: prefill the prompts into a KV cache, then decode the new tokens in compiled chunks of steps.

Two compiled functions per shape bucket, both ahead of time and cached on the ``Engine``:

* ``prefill`` (batch bucket, prompt bucket, cache bucket): the prompts, right-padded, run through
  ``GPT.prefill``, which writes every position's keys and values into a fresh ``KVCache``; the first new token
  is chosen from the logits at each row's last real position.
* ``decode`` (batch bucket, cache bucket): a ``lax.while_loop`` of ``GPT.decode`` steps and sampling from step
  ``i`` up to step ``stop_at`` (or until every row is done); the cache comes in donated, so XLA updates it in place.
  The loop runs ``DECODE_CHUNK`` steps an iteration (a ``fori_loop`` of static length), then single steps for the
  rest, so the ``while_loop``'s per-iteration cost on a GPU (its predicate checked between iterations) is paid once
  a chunk: H100, B=1, ms/token, same run: gpt2 0.411 -> 0.402, gpt2-xl 2.132 -> 2.114 (and gpt2-xl compiles in 8.0 s
  instead of 6.0). Rows done mid-chunk only record -1, as they would one step at a time.

The host drives ``decode`` a call at a time (``_Decoder``), each call at most ``CALL_STEPS`` steps and about
``CALL_SECONDS`` long, and queues the next call before it reads the last one's tokens, so the GPU never waits for
the host. Between calls the host streams the new text, finds stop strings, marks rows it cancels (they stop at the
next call), and a Ctrl-C lands: ``generate`` then raises ``GenerationInterrupted`` carrying every token produced so
far. One call costs a dispatch, hidden behind the call before it.

Rows are right-padded, not left-padded: row ``b`` keeps its own positions ``0..len-1`` and its token ``t`` goes to
cache slot ``len + t``; the prefill is the plain causal forward (padding sits after every real position, so it is
never seen) and decode attention masks the slots at or past each row's length. Each row's tokens are therefore those
of the prompt run alone. Batches pad to a power of two with rows that start finished.
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

from jaxgpt import tokenizer
from jaxgpt.buckets import bucket_length, round_up
from jaxgpt.engine import Engine
from jaxgpt.errors import UsageError
from jaxgpt.model import KVCache
from jaxgpt.sampling import Sampling, sample
from jaxgpt.validation import check_sampling

EOS_ID = tokenizer.EOT_ID
DECODE_CHUNK = 16  # steps a decode-loop iteration runs (module docstring)
# Steps unrolled within a chunk's loop (``fori_loop(unroll=)``): each loop iteration costs a small condition kernel
# on the GPU (``set_while_condition``, ~2 µs). H100, gpt2-xl B=1, 2026-11-26, one run each: 1 / 2 / 4 unrolled
# 2.007 / 1.988 / 1.995 ms/token (loop kernel time 1.997 / 1.984 / 1.993).
DECODE_UNROLL = 4
CALL_STEPS = 128  # the most steps one decode call runs before the host sees its tokens (module docstring)
CALL_SECONDS = 0.1  # ... and about the longest one call runs: a Ctrl-C or a cancel lands within ~2 of them


@dataclasses.dataclass
class Generation:
    """One prompt's continuation. ``ids`` stop before the EOS token or stop string that ended it."""

    prompt: str | None
    prompt_ids: list[int]
    ids: list[int]
    text: str
    finish_reason: str  # "eos", "stop" (a stop string), "length" or "interrupted"

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


class GenerationInterrupted(KeyboardInterrupt):
    """A Ctrl-C (``KeyboardInterrupt``) during ``generate``, carrying what was generated before it: ``result`` holds
    every row, those that had not finished with ``finish_reason == "interrupted"``. Code that does not know this
    class sees the ``KeyboardInterrupt`` it expects."""

    def __init__(self, result: GenerateResult):
        super().__init__("generation interrupted")
        self.result = result


# --------------------------------------------------------------------------------------------- compiled functions

def _prefill(graphdef, ops, cache_len: int, greedy: bool, state, ids, lengths, rows, done, key, eos, temperature,
             top_k, top_p):
    """Token 0 of each row: ``(tok, out, done, cache)``; out (B, S) int32 holds token 0 in column 0 and -1 after it
    (and -1 for rows already done), ``done`` adds the rows whose token 0 is ``eos``."""
    model = nnx.merge(graphdef, state)
    B = ids.shape[0]
    cache = KVCache.zeros(model.config, B, cache_len, model.wte.weight.dtype)  # (B, S, H, D) per layer
    logits, cache = model.prefill(ids, lengths - 1, cache, ops)  # (B, V)
    tok = sample(logits, jax.random.fold_in(key, 0), temperature, top_k, top_p, rows, greedy=greedy)  # (B,)
    out = jnp.full((B, cache_len), -1, jnp.int32).at[:, 0].set(jnp.where(done, -1, tok))  # (B, S)
    return tok, out, done | (tok == eos), cache


def _decode(graphdef, ops, greedy: bool, state, cache: KVCache, i, tok, out, done, cancel, lengths, rows, stop_at,
            key, eos, temperature, top_k, top_p):
    """Steps ``i..stop_at-1`` (token ``i`` of each row; token 0 came from the prefill), fewer if every row is done
    first: ``(cache, i, tok, out, done)`` after them. ``i`` is shape (1,) (per shard when the batch is split over
    devices); rows in ``cancel`` are done from the start; the cache comes in donated and goes out updated."""
    model = nnx.merge(graphdef, state)
    done = done | cancel

    def step(c):
        i, tok, cache, out, done = c
        logits, cache = model.decode(tok, lengths + i - 1, cache, ops)  # token i-1 sits at slot len + i - 1
        nxt = sample(logits, jax.random.fold_in(key, i), temperature, top_k, top_p, rows, greedy=greedy)  # (B,)
        out = jax.lax.dynamic_update_slice(out, jnp.where(done, -1, nxt)[:, None], (0, i))  # (B, S)
        return i + 1, nxt, cache, out, done | (nxt == eos)

    def steps(k: int, c):  # while a whole chunk of k steps fits below stop_at and some row is still going
        return jax.lax.while_loop(lambda c: (c[0] + k <= stop_at) & ~jnp.all(c[4]),
                                  lambda c: jax.lax.fori_loop(0, k, lambda _, c: step(c), c,
                                                              unroll=min(DECODE_UNROLL, k)) if k > 1 else step(c), c)

    c = (i[0], tok, cache, out, done)
    if DECODE_CHUNK > 1:
        c = steps(DECODE_CHUNK, c)
    i, tok, cache, out, done = steps(1, c)
    return cache, i[None], tok, out, done


def _compiled(engine: Engine, batch: int, prompt_len: int, cache_len: int, greedy: bool):
    """The prefill and decode functions for a shape bucket, compiled once each; ``greedy`` (static: a greedy loop
    never sorts the vocabulary) is part of their key."""
    scalars = [jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32),
               jax.ShapeDtypeStruct((), jnp.float32)]
    key_spec = jax.eval_shape(lambda: jax.random.key(0))
    i32, row_i32 = jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((batch,), jnp.int32)
    row_bool = jax.ShapeDtypeStruct((batch,), jnp.bool_)
    out_spec = jax.ShapeDtypeStruct((batch, cache_len), jnp.int32)
    pre = engine.aot(("prefill", batch, prompt_len, cache_len, greedy), _prefill, engine.graphdef, engine.ops,
                     cache_len, greedy, args=(jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32), row_i32,
                                              row_i32, row_bool, key_spec, i32, *scalars),
                     kinds=("batch", "batch", "batch", "batch", "rep", "rep", "rep", "rep", "rep"),
                     out_kinds=("batch", "batch", "batch", "cache"))
    cache_spec = jax.eval_shape(lambda: KVCache.zeros(engine.config, batch, cache_len, engine.dtype))
    shards = engine.layout.data if engine.layout is not None and engine.layout.tensor == 1 else 1
    dec = engine.aot(("decode", batch, cache_len, greedy), _decode, engine.graphdef, engine.ops, greedy,
                     args=(cache_spec, jax.ShapeDtypeStruct((shards,), jnp.int32), row_i32, out_spec, row_bool,
                           row_bool, row_i32, row_i32, i32, key_spec, i32, *scalars), donate=(0,),
                     kinds=("cache", "steps", "batch", "batch", "batch", "batch", "batch", "batch", "rep", "rep",
                            "rep", "rep", "rep", "rep"),
                     out_kinds=("cache", "steps", "batch", "batch", "batch"))
    return pre, dec


class _Decoder:
    """Drives a compiled ``decode`` from the host, a call at a time, with the next call always queued.

    ``run(on_tokens)`` calls ``on_tokens(i0, i1, out)`` after each call with the host copy of ``out`` (B, S) whose
    columns ``i0..i1-1`` are new; it returns the rows to cancel from then on (a bool (B,) array, or None). A call
    runs at most ``CALL_STEPS`` steps, fewer once the measured step time says it would take over ``CALL_SECONDS``.
    The last host copy of ``out`` (``self.out``) survives an exception in the middle, a Ctrl-C included."""

    def __init__(self, engine: Engine, dec, carry, args, max_new: int, out: np.ndarray):
        self.engine, self.dec, self.carry, self.args, self.max_new = engine, dec, carry, args, max_new
        self.out, self.steps = out, 1  # tokens 0..steps-1 of every row are in ``out`` (or the row was done)
        self.cancel = np.zeros((out.shape[0],), bool)
        self._cancel_dev = engine.put(self.cancel)

    def cancel_rows(self, rows: np.ndarray | None) -> None:
        """Rows (a bool (B,) mask) that stop at the next call, for a stop string or a caller's cancel."""
        if rows is not None and np.any(rows & ~self.cancel):
            self.cancel = self.cancel | rows
            self._cancel_dev = self.engine.put(self.cancel)

    def _launch(self, stop_at: int):
        cache, i, tok, out, done = self.carry
        self.carry = self.dec(self.engine.state, cache, i, tok, out, done, self._cancel_dev, *self.args[:2],
                              self.engine.put(np.int32(stop_at), kind="rep"), *self.args[2:])
        return stop_at, self.carry[1], self.carry[3], self.carry[4]  # what a fetch reads: i, out, done

    def run(self, on_tokens: Callable[[int, int, np.ndarray], np.ndarray | None]) -> None:
        if self.steps >= self.max_new:
            return
        k = min(DECODE_CHUNK, CALL_STEPS)  # the first call is short: the first text streams soon
        pending = self._launch(min(self.max_new, 1 + k))
        t_last = time.perf_counter()
        while pending is not None:
            stop_at, i, out, done = pending
            queued = self._launch(min(self.max_new, stop_at + k)) if stop_at < self.max_new else None
            i, out, done = (self.engine.fetch(a) for a in (i, out, done))
            reached = int(np.max(i))
            t = time.perf_counter()
            per_step = (t - t_last) / max(reached - self.steps, 1)
            t_last = t
            self.out, start, self.steps = out, self.steps, reached
            self.cancel_rows(on_tokens(start, reached, out))
            if np.all(done | self.cancel) or reached >= self.max_new:
                break
            fits = max(1, int(CALL_SECONDS / max(per_step, 1e-9)))  # steps in CALL_SECONDS
            k = min(CALL_STEPS, 1 << (fits.bit_length() - 1))  # a power of two: few distinct stop points
            pending = queued


# ------------------------------------------------------------------------------------------------ host side

class Detokenizer:
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

    def flush(self) -> str:
        """At the end of the row: the text still held back (a possible stop string's prefix, or an incomplete
        character, as U+FFFD)."""
        if not self.stopped:
            self.text = tokenizer.get_encoding().decode_bytes(self.ids).decode("utf-8", "replace")
        piece = self.text[self.emitted:]
        self.emitted = len(self.text)
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
    check_sampling(float(temperature), int(top_k), float(top_p), engine.config.vocab_size)
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
    pre, dec = _compiled(engine, batch, prompt_len, cache_len, sampling.greedy)

    ids = np.zeros((batch, prompt_len), np.int32)
    lengths = np.ones((batch,), np.int32)
    for r, row in enumerate(rows):
        ids[r, :len(row)], lengths[r] = row, len(row)
    done = np.arange(batch) >= n  # padding rows start finished
    detoks = [Detokenizer(stops) for _ in range(n)]
    eos = np.int32(EOS_ID if stop_at_eos else -1)

    def on_tokens(i0: int, i1: int, out: np.ndarray) -> np.ndarray | None:
        """New columns i0..i1-1 of ``out``: stream them, and cancel the rows a stop string ended."""
        if stream is None and not stops:
            return None
        hit = np.zeros((batch,), bool)
        for r in range(n):
            for t in out[r, i0:i1].tolist():
                if t < 0 or (stop_at_eos and t == EOS_ID):
                    break
                piece = detoks[r].push(t)
                if piece and stream is not None:
                    stream(r, piece)
                if detoks[r].stopped:
                    hit[r] = True
                    break
        return hit

    rep = functools.partial(engine.put, kind="rep")
    key = rep(jax.random.key(seed))
    params = [rep(a) for a in sampling.arrays()]
    row_ids = engine.put(np.arange(batch, dtype=np.int32))
    t0 = t1 = time.perf_counter()
    decoder = None
    out = np.full((batch, 1), -1, np.int32)  # what a row has, until the prefill's token 0 comes back
    try:
        lengths_d = engine.put(lengths)
        tok, out_d, done_d, cache = pre(engine.state, engine.put(ids), lengths_d, row_ids, engine.put(done), key,
                                        rep(eos), *params)
        out = engine.fetch(out_d)
        t1 = time.perf_counter()
        first = np.zeros((engine.layout.data if engine.layout is not None and engine.layout.tensor == 1 else 1,),
                         np.int32) + 1
        decoder = _Decoder(engine, dec, (cache, engine.put(first, kind="steps"), tok, out_d, done_d),
                           (lengths_d, row_ids, key, rep(eos), *params), max_new_tokens, out)
        decoder.cancel_rows(on_tokens(0, 1, out))  # a stop string in token 0 already ends its row
        decoder.run(on_tokens)
        out = decoder.out
    except KeyboardInterrupt:
        out = decoder.out if decoder is not None else out
        partial = _finish(texts, rows, out, max_new_tokens, stop_at_eos, stops, detoks, stream, interrupted=True)
        t2 = time.perf_counter()
        raise GenerationInterrupted(GenerateResult(partial, prefill_s=t1 - t0, decode_s=t2 - t1,
                                                   decode_steps=decoder.steps - 1 if decoder else 0)) from None
    t2 = time.perf_counter()
    engine.timings.run_s += t2 - t0
    result = _finish(texts, rows, out, max_new_tokens, stop_at_eos, stops, detoks, stream)
    return GenerateResult(result, prefill_s=t1 - t0, decode_s=t2 - t1, decode_steps=decoder.steps - 1)


def _finish(texts, rows, out: np.ndarray, max_new_tokens: int, stop_at_eos: bool, stops: list[str],
            detoks: list[Detokenizer], stream, interrupted: bool = False) -> list[Generation]:
    """Each row's ``Generation`` from the tokens in ``out`` (-1 after a row's last); ``interrupted``: rows that
    had not finished say so."""
    result = []
    for r in range(len(rows)):
        gen, reason = [], "interrupted" if interrupted else "length"
        for t in out[r, :max_new_tokens].tolist():
            if t < 0:
                break
            if stop_at_eos and t == EOS_ID:
                reason = "eos"
                break
            gen.append(t)
        if interrupted and len(gen) == max_new_tokens:
            reason = "length"
        text = tokenizer.decode(gen)
        if stops:
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
                gen = _ids_before(gen, text)
        if stream is not None:  # whatever the calls could not hand out yet (a stop string's held-back prefix)
            rest = text[detoks[r].emitted:]
            if rest:
                stream(r, rest)
        result.append(Generation(texts[r], rows[r], gen, text, reason))
    return result


def _ids_before(ids: list[int], text: str) -> list[int]:
    """The longest prefix of ``ids`` whose text is a prefix of ``text`` (the tokens before a stop string)."""
    keep = []
    for t in ids:
        if not text.startswith(tokenizer.decode(keep + [t])):
            break
        keep.append(t)
    return keep
