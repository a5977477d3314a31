"""Continuous batching: a fixed number of slots over one KV cache; requests join and leave between decode calls.

The device keeps every slot's state (``Slots``, donated through each call): its cache rows, its last token and that
token's position, how many tokens it has made, its limit and its own sampling settings. Two kinds of compiled call
change it, both compiled when the server starts (``BatchEngine.compile``), never on a request:

* ``admit`` (prefill batch bucket, prompt bucket): prefills up to ``prefill_batch`` new prompts, writes their keys
  and values into their slots' cache rows and chooses each one's token 0;
* ``decode`` (greedy?, logprobs?): ``chunk`` steps of every slot; a slot that is done only records -1.

A host thread (``BatchEngine.run``) loops: admit waiting requests into free slots, queue the next decode call, then
read the one before it (the GPU always has a call queued), hand each request its new tokens, and free the slots of
requests that ended (EOS, their limit, a stop string, or a client that went away; the last two are cancelled on the
device at the next call). Row ``b``'s token ``i`` is drawn with ``fold_in(fold_in(key(seed), i), 0)`` from its own
logits, so a request's tokens are those ``jaxgpt.generate`` gives its prompt alone, whatever shares the batch.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgpt import tokenizer
from jaxgpt.buckets import bucket_length
from jaxgpt.engine import Engine
from jaxgpt.generate import Detokenizer
from jaxgpt.model import KVCache
from jaxgpt.sampling import sample_rows

TOP_LOGPROBS = 5  # the most alternatives a token's logprobs list (OpenAI's limit for completions)


class Slots(NamedTuple):
    """Every slot's state on the device; ``B`` slots, cache length ``S``."""

    cache: KVCache  # (B, S, H, D) per layer
    tok: jax.Array  # (B,) int32: the last token, its key/value not yet in the cache
    pos: jax.Array  # (B,) int32: that token's position
    n: jax.Array  # (B,) int32: tokens made so far (the index of the next one)
    limit: jax.Array  # (B,) int32: max tokens
    done: jax.Array  # (B,) bool
    seed: jax.Array  # (B,) uint32
    temperature: jax.Array  # (B,) float32, 0 = greedy
    top_k: jax.Array  # (B,) int32, 0 = off
    top_p: jax.Array  # (B,) float32, 1 = off
    eos: jax.Array  # (B,) int32, -1 = never stops at a token


class Tokens(NamedTuple):
    """What a call made: ``ids`` (R, K) int32 with -1 where a row made nothing; with logprobs, ``logprob`` (R, K)
    of each token and the ``TOP_LOGPROBS`` best alternatives (R, K, N); otherwise those are None."""

    ids: jax.Array
    logprob: jax.Array | None = None
    top_ids: jax.Array | None = None
    top_logprob: jax.Array | None = None


def _choose(logits, slots_seed, n, temperature, top_k, top_p, greedy: bool):
    """Token ``n[b]`` of each row from its float32 logits (B, V): argmax, or a draw with the row's own key."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), i), 0))(slots_seed, n)
    return sample_rows(logits, keys, temperature, top_k, top_p)


def _logprobs(logits, tok):
    """log p(tok) (B,), and the best ``TOP_LOGPROBS`` (ids, logprobs) (B, N) of the model's own distribution."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B, V)
    top_lp, top_ids = jax.lax.top_k(lp, TOP_LOGPROBS)  # (B, N)
    return jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0], top_ids.astype(jnp.int32), top_lp


def _admit(graphdef, ops, state, slots: Slots, ids, lengths, where, seed, limit, temperature, top_k, top_p, eos):
    """Prefill ``ids`` (R, P) (rows right-padded, ``lengths`` (R,)) into slots ``where`` (R,) (an index past the
    last slot drops the row: batch padding) and choose each row's token 0: ``(slots, Tokens (R, 1))``."""
    model = nnx.merge(graphdef, state)
    R, P = ids.shape
    fresh = KVCache.zeros(model.config, R, P, model.wte.weight.dtype)  # (R, P, H, D) per layer
    logits, fresh = model.prefill(ids, lengths - 1, fresh, ops)  # (R, V)
    zero = jnp.zeros((R,), jnp.int32)
    tok = _choose(logits, seed, zero, temperature, top_k, top_p, greedy=False)  # (R,)
    lp, top_ids, top_lp = _logprobs(logits, tok)
    put = lambda a, v: a.at[where].set(v, mode="drop")  # noqa: E731  (R,) rows into (B,) slots
    cache = KVCache(tuple(c.at[where, :P].set(f, mode="drop") for c, f in zip(slots.cache.k, fresh.k)),
                    tuple(c.at[where, :P].set(f, mode="drop") for c, f in zip(slots.cache.v, fresh.v)))
    done = (tok == eos) | (limit <= 1)
    slots = Slots(cache, put(slots.tok, tok), put(slots.pos, lengths), put(slots.n, zero + 1), put(slots.limit, limit),
                  put(slots.done, done), put(slots.seed, seed), put(slots.temperature, temperature),
                  put(slots.top_k, top_k), put(slots.top_p, top_p), put(slots.eos, eos))
    return slots, Tokens(tok[:, None], lp[:, None], top_ids[:, None], top_lp[:, None])


def _decode(graphdef, ops, chunk: int, greedy: bool, logprobs: bool, state, slots: Slots, cancel):
    """``chunk`` decode steps of every slot; slots in ``cancel`` (B,) are done first: ``(slots, Tokens (B, chunk))``."""
    model = nnx.merge(graphdef, state)
    B = slots.tok.shape[0]
    n_top = TOP_LOGPROBS if logprobs else 0

    def step(j, c):
        s, out = c
        logits, cache = model.decode(s.tok, s.pos, s.cache, ops)  # (B, V)
        nxt = _choose(logits, s.seed, s.n, s.temperature, s.top_k, s.top_p, greedy)  # (B,)
        live = ~s.done
        ids = out.ids.at[:, j].set(jnp.where(live, nxt, -1))  # (B, chunk)
        if logprobs:
            lp, top_ids, top_lp = _logprobs(logits, nxt)
            out = Tokens(ids, out.logprob.at[:, j].set(lp), out.top_ids.at[:, j].set(top_ids),
                         out.top_logprob.at[:, j].set(top_lp))
        else:
            out = Tokens(ids)
        n = jnp.where(live, s.n + 1, s.n)
        done = s.done | (live & ((nxt == s.eos) | (n >= s.limit)))
        s = s._replace(cache=cache, tok=jnp.where(live, nxt, s.tok), pos=jnp.where(live, s.pos + 1, s.pos), n=n,
                       done=done)
        return s, out

    out = Tokens(jnp.full((B, chunk), -1, jnp.int32))
    if logprobs:
        out = Tokens(out.ids, jnp.zeros((B, chunk), jnp.float32), jnp.zeros((B, chunk, n_top), jnp.int32),
                     jnp.zeros((B, chunk, n_top), jnp.float32))
    slots = slots._replace(done=slots.done | cancel)
    return jax.lax.fori_loop(0, chunk, step, (slots, out), unroll=min(4, chunk))


# ----------------------------------------------------------------------------------------------------- host side

@dataclasses.dataclass
class Request:
    """One completion (one choice): a prompt's ids and its settings. The engine calls ``on_event`` from its own
    thread with ``("tokens", [Token, ...])`` as tokens come and, last, ``("done", finish_reason)`` (``"stop"``,
    ``"length"``, ``"cancelled"``) or ``("error", message)``."""

    ids: list[int]
    max_tokens: int
    on_event: Callable[[str, object], None]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    stop_at_eos: bool = True
    # filled in by the engine
    made: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    t_submit: float = 0.0
    t_first: float | None = None
    _detok: Detokenizer | None = None


@dataclasses.dataclass
class Token:
    """A token handed to a request: its id, the new text it completes (often "", while a character or a possible
    stop string is incomplete), and with logprobs its log-probability and the best alternatives."""

    id: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


class QueueFull(Exception):
    """The engine's queue holds ``max_queue`` requests already."""


class EngineStopped(Exception):
    """The engine takes no more requests: it was stopped, or a device error ended its loop."""


class BatchEngine:
    """Continuous batching over ``slots`` rows of one ``Engine`` (one device); ``run`` in a thread of its own."""

    def __init__(self, engine: Engine, *, slots: int = 64, chunk: int = 16, prefill_batch: int = 4,
                 max_queue: int = 1024, cache_len: int | None = None):
        if engine.layout is not None:
            raise ValueError("a BatchEngine runs on one device: give each device its own engine (data parallel)")
        if slots < 1 or chunk < 1 or prefill_batch < 1 or max_queue < 1:
            raise ValueError(f"{slots=}, {chunk=}, {prefill_batch=} and {max_queue=} must be >= 1")
        self.engine, self.slots, self.chunk, self.max_queue = engine, slots, chunk, max_queue
        self.prefill_batches = sorted({1, min(prefill_batch, slots)})
        n_ctx = engine.config.n_ctx
        self.cache_len = min(cache_len or n_ctx, n_ctx)
        self.prompt_buckets = sorted({bucket_length(t, self.cache_len) for t in range(1, self.cache_len + 1)})
        self._queue: collections.deque[Request] = collections.deque()
        self._lock = threading.Condition()
        self._cancels: set[int] = set()  # id() of requests to cancel at the next turn
        self._owner: list[Request | None] = [None] * slots
        self._stop = threading.Event()
        self.error: str | None = None  # why the loop ended, when a device error ended it
        self._state: Slots | None = None
        self.steps_run = 0  # decode steps the device ran (every slot at once)
        self.busy_slot_steps = 0  # ... summed over the slots that held a request
        self.on_turn: Callable[[], None] | None = None  # called after each decode call is read (metrics)

    # ------------------------------------------------------------------------------------------- compiling
    def _admit_fn(self, rows: int, prompt_len: int):
        e, B, S = self.engine, self.slots, self.cache_len
        i32, f32 = (lambda n: jax.ShapeDtypeStruct((n,), jnp.int32)), (lambda n: jax.ShapeDtypeStruct((n,), jnp.float32))
        return e.aot(("serve-admit", B, S, rows, prompt_len), _admit, e.graphdef, e.ops,
                     args=(self._slots_spec(), jax.ShapeDtypeStruct((rows, prompt_len), jnp.int32), i32(rows),
                           i32(rows), jax.ShapeDtypeStruct((rows,), jnp.uint32), i32(rows), f32(rows), i32(rows),
                           f32(rows), i32(rows)), donate=(0,))

    def _decode_fn(self, greedy: bool, logprobs: bool):
        e, B, S = self.engine, self.slots, self.cache_len
        return e.aot(("serve-decode", B, S, self.chunk, greedy, logprobs), _decode, e.graphdef, e.ops, self.chunk,
                     greedy, logprobs, args=(self._slots_spec(), jax.ShapeDtypeStruct((B,), jnp.bool_)), donate=(0,))

    def _slots_spec(self):
        return jax.eval_shape(lambda: self._empty_slots())

    def _empty_slots(self) -> Slots:
        B, cfg = self.slots, self.engine.config
        z = lambda dt: jnp.zeros((B,), dt)  # noqa: E731
        return Slots(KVCache.zeros(cfg, B, self.cache_len, self.engine.dtype), z(jnp.int32), z(jnp.int32),
                     z(jnp.int32), z(jnp.int32) + 1, jnp.ones((B,), bool), z(jnp.uint32), z(jnp.float32),
                     z(jnp.int32), z(jnp.float32) + 1, z(jnp.int32) - 1)

    def compile(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Compile every call the engine can make (so no request ever waits for a compile); returns their count."""
        jobs = [(self._decode_fn, (g, lp)) for g in (True, False) for lp in (False, True)]
        jobs += [(self._admit_fn, (r, p)) for r in self.prefill_batches for p in self.prompt_buckets]
        for k, (fn, a) in enumerate(jobs):
            fn(*a)
            if progress is not None:
                progress(k + 1, len(jobs))
        with jax.default_device(self.engine.device):
            self._state = jax.device_put(self._empty_slots(), self.engine.device)
        return len(jobs)

    # ------------------------------------------------------------------------------------------- the API
    def submit(self, req: Request) -> None:
        """Queue ``req`` (validated by the caller: ids fit ``cache_len`` with ``max_tokens``); ``QueueFull`` when
        ``max_queue`` requests wait already."""
        if len(req.ids) + req.max_tokens > self.cache_len:
            raise ValueError(f"{len(req.ids)} prompt tokens + max_tokens {req.max_tokens} > {self.cache_len}")
        with self._lock:
            if self._stop.is_set() or self.error is not None:
                raise EngineStopped(self.error or "the engine is stopping")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting already (--max-queue {self.max_queue})")
            req.t_submit = time.perf_counter()
            req._detok = Detokenizer(req.stop)
            self._queue.append(req)
            self._lock.notify()

    def cancel(self, req: Request) -> None:
        """Stop ``req`` (a client that went away): it leaves the queue, or its slot at the next decode call."""
        with self._lock:
            self._cancels.add(id(req))
            self._lock.notify()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return sum(r is not None for r in self._owner)

    def load(self) -> int:
        """Requests queued or running (for a router's choice)."""
        return len(self._queue) + self.active

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify()

    # ------------------------------------------------------------------------------------------- the loop
    def run(self) -> None:
        """The engine loop (a thread's target): until ``stop``; requests still open then end with ``cancelled``."""
        if self._state is None:
            self.compile()
        pending: collections.deque = collections.deque()  # (kind, owners at launch, device Tokens) not yet read
        cancel = np.zeros((self.slots,), bool)
        try:
            while not self._stop.is_set():
                cancel |= self._take_cancels()
                pending.extend(self._admit_waiting(cancel))
                if self.active == 0:
                    while pending:
                        self._read(*pending.popleft(), cancel)
                    with self._lock:
                        if not self._queue and not self._cancels and not self._stop.is_set():
                            self._lock.wait(timeout=0.5)
                    continue
                logprobs = any(r is not None and r.logprobs for r in self._owner)
                greedy = all(r is None or r.temperature <= 0 for r in self._owner)
                fn = self._decode_fn(greedy, logprobs)
                self._state, out = fn(self.engine.state, self._state, self.engine.put(cancel))
                cancel[:] = False
                pending.append(("decode", list(self._owner), out))
                while len(pending) > 1:  # read everything but the call just queued
                    self._read(*pending.popleft(), cancel)
                self.steps_run += self.chunk
        except Exception as e:  # a device error ends every open request with it, not silently
            self.error = f"the engine stopped: {type(e).__name__}: {e}"
            self._fail_all(self.error)
            raise
        finally:
            self._fail_all(None)

    def _take_cancels(self) -> np.ndarray:
        mask = np.zeros((self.slots,), bool)
        with self._lock:
            if not self._cancels:
                return mask
            gone = self._cancels
            self._cancels = set()
            kept = collections.deque()
            for r in self._queue:
                if id(r) in gone:
                    self._finish(r, "cancelled")
                else:
                    kept.append(r)
            self._queue = kept
        for b, r in enumerate(self._owner):
            if r is not None and id(r) in gone:
                self._finish(r, "cancelled")
                self._owner[b] = None
                mask[b] = True
        return mask

    def _admit_waiting(self, cancel: np.ndarray) -> list:
        """Prefill waiting requests into free slots, a prefill batch at a time; returns what to read later. While
        other requests decode, one prefill call a turn: a burst of arrivals stalls their decode by one prefill."""
        launched = []
        calls = 1 if self.active else self.slots
        while len(launched) < calls:
            free = [b for b, r in enumerate(self._owner) if r is None]
            with self._lock:
                if not free or not self._queue:
                    return launched
                take = min(len(free), self.prefill_batches[-1], len(self._queue))
                # one prompt bucket per call: the first request's, with the next ones that fit in it
                bucket = bucket_length(len(self._queue[0].ids), self.cache_len)
                reqs = [self._queue.popleft()]
                while len(reqs) < take and self._queue and len(self._queue[0].ids) <= bucket:
                    reqs.append(self._queue.popleft())
            rows = next(r for r in self.prefill_batches if r >= len(reqs))
            where = np.full((rows,), self.slots, np.int32)  # past the last slot: dropped (padding rows)
            ids = np.zeros((rows, bucket), np.int32)
            cols = {k: np.zeros((rows,), dt) for k, dt in (("lengths", np.int32), ("seed", np.uint32),
                                                          ("limit", np.int32), ("temperature", np.float32),
                                                          ("top_k", np.int32), ("top_p", np.float32),
                                                          ("eos", np.int32))}
            cols["lengths"][:], cols["limit"][:], cols["top_p"][:], cols["eos"][:] = 1, 1, 1.0, -1
            for j, r in enumerate(reqs):
                b = free[j]
                self._owner[b], where[j], cancel[b] = r, b, False
                ids[j, :len(r.ids)] = r.ids
                for k, v in (("lengths", len(r.ids)), ("seed", r.seed % (1 << 32)), ("limit", r.max_tokens),
                             ("temperature", r.temperature), ("top_k", r.top_k), ("top_p", r.top_p),
                             ("eos", tokenizer.EOT_ID if r.stop_at_eos else -1)):
                    cols[k][j] = v
            fn = self._admit_fn(rows, bucket)
            put = self.engine.put
            self._state, out = fn(self.engine.state, self._state, put(ids), put(cols["lengths"]), put(where),
                                  put(cols["seed"]), put(cols["limit"]), put(cols["temperature"]),
                                  put(cols["top_k"]), put(cols["top_p"]), put(cols["eos"]))
            owners = [None] * rows
            for j, r in enumerate(reqs):
                owners[j] = r
            launched.append(("admit", owners, out))
        return launched

    def _read(self, kind: str, owners: list, out: Tokens, cancel: np.ndarray) -> None:
        """Hand each request its new tokens from a finished call; free the slots of requests that ended."""
        ids = self.engine.fetch(out.ids)  # (R, K)
        lp = top_ids = top_lp = None
        if out.logprob is not None:
            lp, top_ids, top_lp = (self.engine.fetch(a) for a in (out.logprob, out.top_ids, out.top_logprob))
        now = time.perf_counter()
        busy = 0
        for j, r in enumerate(owners):
            if r is None or r.finish_reason is not None:
                continue
            busy += 1
            try:
                self._hand_out(r, j, ids, lp, top_ids, top_lp, now)
            except Exception as e:  # noqa: BLE001 - a fault in one request's handling ends that request alone
                r.finish_reason = "error"
                self._free(r, cancel)
                r.on_event("error", f"{type(e).__name__}: {e}")
                continue
            if r.finish_reason is not None:
                self._release(r, cancel)
        if kind == "decode":
            self.busy_slot_steps += busy * self.chunk
            if self.on_turn is not None:
                self.on_turn()

    def _hand_out(self, r: Request, j: int, ids, lp, top_ids, top_lp, now: float) -> None:
        """Row ``j``'s new tokens to ``r``, up to its end (EOS, a stop string, its limit)."""
        got: list[Token] = []
        for k in range(ids.shape[1]):
            t = int(ids[j, k])
            if t < 0:
                break
            if r.stop_at_eos and t == tokenizer.EOT_ID:
                r.finish_reason = "stop"
                break
            r.made.append(t)
            tok = Token(t, r._detok.push(t))
            if r.logprobs:
                tok.logprob = float(lp[j, k])
                tok.top = [(int(a), float(b)) for a, b in zip(top_ids[j, k], top_lp[j, k])]
            got.append(tok)
            if r._detok.stopped:
                r.finish_reason = "stop"
                break
            if len(r.made) >= r.max_tokens:
                r.finish_reason = "length"
                break
        if got:
            if r.t_first is None:
                r.t_first = now
            r.on_event("tokens", got)

    def _release(self, r: Request, cancel: np.ndarray) -> None:
        """Free ``r``'s slot and tell it why it ended."""
        self._free(r, cancel)
        self._finish(r, r.finish_reason)

    def _free(self, r: Request, cancel: np.ndarray) -> None:
        for b, o in enumerate(self._owner):
            if o is r:
                self._owner[b] = None
                cancel[b] = True  # a stop string ends it on the host first: the device stops it at the next call

    @staticmethod
    def _finish(r: Request, reason: str) -> None:
        r.finish_reason = reason
        if reason in ("stop", "length"):
            rest = r._detok.flush() if r._detok is not None else ""
            if rest:
                r.on_event("tokens", [Token(-1, rest)])
        r.on_event("done", reason)

    def _fail_all(self, message: str | None) -> None:
        with self._lock:
            waiting, self._queue = list(self._queue), collections.deque()
        for r in itertools.chain(waiting, (o for o in self._owner if o is not None)):
            if r.finish_reason is None:
                r.finish_reason = "cancelled"
                r.on_event("error", message or "the server is shutting down")
        self._owner = [None] * self.slots
