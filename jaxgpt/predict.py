"""The seed's flow: prompt → ids → logits at the last position → top-k table → greedy next token."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxgpt import tokenizer
from jaxgpt.engine import Engine
from jaxgpt.errors import UsageError
from jaxgpt.validation import check_top_k


@dataclasses.dataclass(frozen=True)
class Candidate:
    id: int
    logit: float
    text: str


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One prompt's next-token prediction."""

    prompt: str
    prompt_ids: list[int]
    top_k: list[Candidate]  # best first
    next_token: Candidate  # greedy: argmax over the whole vocabulary

    @property
    def completion(self) -> str:
        return self.prompt + self.next_token.text

    def to_dict(self, **extra) -> dict:
        return {**extra, "prompt": self.prompt, "prompt_ids": self.prompt_ids,
                "top_k": [dataclasses.asdict(c) for c in self.top_k],
                "next_token": {"id": self.next_token.id, "text": self.next_token.text},
                "completion": self.completion}


def top_k_of(logits: np.ndarray, k: int) -> list[Candidate]:
    """The k largest logits of one row, best first (ties by lower id, as a stable sort gives)."""
    idx = np.argsort(-logits, kind="stable")[:k]
    return [Candidate(int(i), float(logits[i]), tokenizer.decode_token(int(i))) for i in idx]


def predict(engine: Engine, prompts: str | list[str], top_k: int = 10,
            pmap: bool = False) -> Prediction | list[Prediction]:
    """Top-k candidates and the greedy next token for one prompt (or a batch: a list in, a list out).

    ``pmap=True`` splits the batch over the local devices with ``jax.pmap`` (``jaxgpt.sharding.pmap_last_logits``);
    a sharded engine (``jaxgpt.shard``) splits it through its mesh without asking.
    """
    single = isinstance(prompts, str)
    batch = [prompts] if single else list(prompts)
    check_top_k(top_k, engine.config.vocab_size)
    if any(p == "" for p in batch):
        raise UsageError("empty prompt: give some text to continue")
    rows = [tokenizer.encode(p) for p in batch]
    if pmap:
        from jaxgpt.sharding import pmap_last_logits
        logits = pmap_last_logits(engine, rows)  # (B, V) float32
    else:
        logits = engine.last_logits(rows)  # (B, V) float32
    out = []
    for prompt, ids, row in zip(batch, rows, logits):
        if not np.all(np.isfinite(row)):
            raise FloatingPointError(f"non-finite logits for prompt {prompt!r}")
        cands = top_k_of(row, top_k)
        greedy = int(np.argmax(row))
        out.append(Prediction(prompt, ids, cands, Candidate(greedy, float(row[greedy]),
                                                            tokenizer.decode_token(greedy))))
    return out[0] if single else out


def format_table(p: Prediction) -> str:
    lines = [f"{'rank':>4}  {'logit':>9}  {'id':>6}  text"]
    for r, c in enumerate(p.top_k, 1):
        lines.append(f"{r:>4}  {c.logit:9.2f}  {c.id:6d}  {c.text!r}")
    lines.append(f"next token: {p.next_token.id} {p.next_token.text!r}")
    lines.append(p.completion)
    return "\n".join(lines)
