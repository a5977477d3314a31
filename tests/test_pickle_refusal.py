"""A PyTorch file holding more than tensors is refused in our own words, with a one-line conversion for a file the
user trusts; torch's advice to load it without the weights-only reader is never passed on."""

import argparse
import shlex
import sys

import numpy as np
import pytest
import torch

from jaxgpt import GPTConfig, WeightsError, load_checkpoint, random_state_dict

CFG = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_ctx=8, vocab_size=40)
TORCH_ADVICE = ("will likely succeed", "add_safe_globals", "weights_only` set to `False`", "two options")


def test_pickled_objects_are_refused_with_a_conversion_that_works(tmp_path, monkeypatch):
    sd = random_state_dict(CFG, 2)
    f = tmp_path / "ckpt.pt"  # nanoGPT's layout: the weights under "model", training arguments beside them
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "args": argparse.Namespace(lr=1)}, f)
    with pytest.raises(WeightsError) as e:
        load_checkpoint(f, CFG)
    msg = str(e.value)
    assert msg.startswith(f"refused {f}") and "argparse.Namespace" in msg and "\n" not in msg
    assert not any(a in msg for a in TORCH_ADVICE), msg
    # The command it gives, run as given (here on a file we made, so trusted): a safetensors file jaxgpt loads.
    python, dash_c, code, src, out = shlex.split(msg.split("pass the result: ")[1])
    assert (python, dash_c, src, out) == ("python", "-c", str(f), str(tmp_path / "ckpt.safetensors"))
    monkeypatch.setattr(sys, "argv", ["-c", src, out])
    exec(code, {})
    _, got = load_checkpoint(out, CFG)
    np.testing.assert_array_equal(got["h.0.mlp.c_fc.weight"], sd["h.0.mlp.c_fc.weight"])


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"\x80\x04garbage"])
def test_a_file_that_is_no_checkpoint_says_so_in_our_words(tmp_path, content):
    (tmp_path / "pytorch_model.bin").write_bytes(content)
    with pytest.raises(WeightsError, match="cannot read checkpoint .*not a PyTorch checkpoint") as e:
        load_checkpoint(tmp_path, CFG)
    assert not any(a in str(e.value) for a in TORCH_ADVICE)
