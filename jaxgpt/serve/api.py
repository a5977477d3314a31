"""The OpenAI completions API: a request body checked into ``Completion`` settings, and responses in OpenAI's shape.

Nothing here touches a device or HTTP: ``parse_completion`` raises ``APIError`` (status, message, param) for every
bad input, and the response builders turn tokens into OpenAI's JSON objects.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid

from jaxgpt import tokenizer
from jaxgpt.serve.engine import TOP_LOGPROBS, Token

MAX_STOPS = 4  # stop strings a request may give (OpenAI's limit)
MAX_N = 16  # choices a request may ask for
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions

# Fields OpenAI's completions endpoint defines that this server takes only at their neutral value.
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None, "best_of": 1, "suffix": None,
           "stream_options": None}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "stream", "logprobs", "echo",
         "seed", "n", "user", "ignore_eos"} | set(NEUTRAL)


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and an OpenAI ``error`` object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Completion:
    """A checked completions request: one or more prompts (token ids), each wanting ``n`` choices."""

    model: str
    prompts: list[list[int]]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: tuple[str, ...]
    stream: bool
    logprobs: int | None
    echo: bool
    seed: int | None
    n: int
    ignore_eos: bool


def _number(body: dict, name: str, default, lo: float, hi: float, integer: bool = False):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", name)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be between {lo} and {hi}, got {v!r}", name)
    return int(v) if integer else float(v)


def _prompts(body: dict, vocab_size: int) -> list[list[int]]:
    p = body.get("prompt")
    if isinstance(p, str):
        texts = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        texts = p
    elif isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        return [_check_ids(p, vocab_size)]
    elif isinstance(p, list) and p and all(isinstance(x, list) for x in p):
        rows = []
        for row in p:
            if not row or not all(isinstance(x, int) and not isinstance(x, bool) for x in row):
                raise APIError(400, "'prompt': each list of token ids must hold at least one integer", "prompt")
            rows.append(_check_ids(row, vocab_size))
        return rows
    else:
        raise APIError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such "
                            "lists (and not empty)", "prompt")
    if any(t == "" for t in texts):
        raise APIError(400, "'prompt' is empty: give some text to continue", "prompt")
    rows = [tokenizer.encode(t) for t in texts]
    for row in rows:
        bad = [t for t in row if t >= vocab_size]
        if bad:
            raise APIError(400, f"'prompt' tokenizes to id {bad[0]}, outside this model's vocabulary of {vocab_size}",
                           "prompt")
    return rows


def _check_ids(row: list[int], vocab_size: int) -> list[int]:
    bad = [t for t in row if not 0 <= t < vocab_size]
    if bad:
        raise APIError(400, f"'prompt': token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", "prompt")
    return list(row)


def parse_completion(body, *, model_name: str, context: int, vocab_size: int) -> Completion:
    """Check a ``/v1/completions`` body; ``context``: the most tokens a prompt plus its completion may hold."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise APIError(400, f"unknown field '{unknown[0]}'", unknown[0])
    for name, neutral in NEUTRAL.items():
        if body.get(name, neutral) not in (neutral, None):
            raise APIError(400, f"'{name}' is not supported by this server (leave it out)", name)
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, "'model' is required: a string", "model")
    if model != model_name:
        raise APIError(404, f"the model '{model}' does not exist: this server serves '{model_name}'", "model",
                       "model_not_found")
    prompts = _prompts(body, vocab_size)
    max_tokens = _number(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, context, integer=True)
    longest = max(map(len, prompts))
    if longest + max_tokens > context:
        raise APIError(400, f"this model's maximum context length is {context} tokens, but {longest} prompt "
                            f"tokens + max_tokens {max_tokens} = {longest + max_tokens}; shorten the prompt or "
                            "lower max_tokens", "max_tokens", "context_length_exceeded")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOPS:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop")
    ignore_eos = body.get("ignore_eos", False)
    for name in ("stream", "echo", "ignore_eos"):
        if not isinstance(body.get(name, False), bool):
            raise APIError(400, f"'{name}' must be true or false", name)
    if "user" in body and not isinstance(body["user"], str):
        raise APIError(400, "'user' must be a string", "user")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = _number(body, "logprobs", 0, 0, TOP_LOGPROBS, integer=True)
    seed = body.get("seed")
    if seed is not None:
        seed = _number(body, "seed", 0, 0, 2 ** 31 - 1, integer=True)
    return Completion(model=model, prompts=prompts, max_tokens=max_tokens,
                      temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                      top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
                      top_k=_number(body, "top_k", 0, 0, vocab_size, integer=True),
                      stop=tuple(s for s in stop if s), stream=body.get("stream", False), logprobs=logprobs,
                      echo=body.get("echo", False), seed=seed, n=_number(body, "n", 1, 1, MAX_N, integer=True),
                      ignore_eos=ignore_eos)


def new_id() -> str:
    return "cmpl-" + uuid.uuid4().hex[:24]


class Choice:
    """One choice's text and logprobs as they grow (``index`` as OpenAI numbers it: prompt * n + j)."""

    def __init__(self, index: int, prompt_ids: list[int], echo: bool, logprobs: int | None):
        self.index, self.logprobs = index, logprobs
        self.text = tokenizer.decode(prompt_ids) if echo else ""
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top: list[dict | None] = []
        self.offsets: list[int] = []
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        if echo and logprobs is not None:  # prompt tokens: their text, no logprob (as for OpenAI's first token)
            at = 0
            for t in prompt_ids:
                s = tokenizer.decode([t])
                self.tokens.append(s)
                self.token_logprobs.append(None)
                self.top.append(None)
                self.offsets.append(at)
                at += len(s)

    def add(self, tokens: list[Token]) -> dict:
        """Append the engine's tokens; returns this piece as a streamed choice object."""
        start, n_lp = len(self.text), len(self.tokens)
        piece = "".join(t.text for t in tokens)
        at = len(self.text)
        for t in tokens:
            if t.id < 0:  # text held back until the end (no token of its own)
                continue
            self.completion_tokens += 1
            if self.logprobs is not None:
                s = tokenizer.decode([t.id])
                self.tokens.append(s)
                self.token_logprobs.append(t.logprob)
                self.top.append({tokenizer.decode([i]): lp for i, lp in (t.top or [])[:self.logprobs]})
                self.offsets.append(at)
            at += len(t.text)
        self.text += piece
        return self.streamed(self.text[start:], n_lp)

    def logprobs_obj(self, since: int = 0) -> dict | None:
        if self.logprobs is None:
            return None
        return {"tokens": self.tokens[since:], "token_logprobs": self.token_logprobs[since:],
                "top_logprobs": self.top[since:], "text_offset": self.offsets[since:]}

    def streamed(self, text: str, since: int) -> dict:
        return {"index": self.index, "text": text, "logprobs": self.logprobs_obj(since),
                "finish_reason": self.finish_reason}

    def final(self) -> dict:
        return {"index": self.index, "text": self.text, "logprobs": self.logprobs_obj(),
                "finish_reason": self.finish_reason}


def completion_object(cid: str, model: str, choices: list[dict], usage: dict | None = None,
                      created: int | None = None) -> dict:
    obj = {"id": cid, "object": "text_completion", "created": created or int(time.time()), "model": model,
           "choices": choices}
    if usage is not None:
        obj["usage"] = usage
    return obj


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
