"""Checks that need the model's shape but not its weights come before the weights load: the config is read from the
preset, --config or the checkpoint's own files, and a bad argument is one line, exit 2, in a fraction of a second."""

import json
import os
import subprocess
import sys
import time

import pytest

import jaxgpt.engine
from jaxgpt import GPTConfig
from jaxgpt.checkpoint import checkpoint_config
from jaxgpt.cli import main
from jaxgpt.errors import UsageError
from jaxgpt.validation import check_sampling, check_top_k, known_config
from tests.conftest import TINY

LONG = "word " * 1100  # 1101 tokens: past gpt2's context of 1024


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights fails the test: every error below must come first."""
    def boom(*a, **k):
        raise AssertionError("the weights were loaded before the arguments were checked")
    monkeypatch.setattr(jaxgpt.engine, "load_weights", boom)
    monkeypatch.setattr(jaxgpt.engine, "load_model", boom)


@pytest.mark.parametrize("argv,needle", [
    (["predict", "x", "--top-k", "0"], "1..50257 (the vocabulary)"),
    (["predict", "x", "--top-k", "50258"], "1..50257 (the vocabulary)"),
    (["predict", LONG], "prompt is 1101 tokens, longer than the context of 1024"),
    (["predict", "x", "--model", "gpt2-xl", "--top-k", "60000"], "1..50257"),
    (["generate", "Dobby is", "--max-new-tokens", "2000"], "= 2003 is past the context of 1024"),
    (["generate", "x", "--top-k", "50258"], "above the vocabulary of 50257"),
    (["generate", LONG, "--max-new-tokens", "1"], "longer than the context of 1024"),
    (["parity", "x", "--top-k", "0"], "1..50257"),
    (["parity", LONG], "longer than the context"),
    (["predict", "x", "--model", "gpt5"], "unknown model"),
    (["quantize", "--bits", "8", "--out", "unused", "--model", "gpt5"], "unknown model"),
])
def test_errors_come_before_the_weights_load(capsys, no_weights, argv, needle):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith("error:") and needle in err, err


def test_the_checkpoints_own_config_bounds_the_checks(capsys, no_weights, tiny_checkpoint):
    code = main(["predict", "word " * 70, "--checkpoint", str(tiny_checkpoint)])  # TINY: n_ctx 64
    assert code == 2 and "longer than the context of 64" in capsys.readouterr().err
    code = main(["generate", "Dobby is", "--max-new-tokens", "62", "--checkpoint", str(tiny_checkpoint)])
    assert code == 2 and "= 65 is past the context of 64" in capsys.readouterr().err


def test_checkpoint_config_reads_no_tensor(tmp_path, tiny_checkpoint):
    assert checkpoint_config(tiny_checkpoint) == TINY  # config.json
    # A safetensors header alone (no tensor data at all): the shapes name a gpt2-sized body.
    names = {"wte.weight": [16, 768], "wpe.weight": [8, 768]} | {f"h.{i}.ln_1.weight": [768] for i in range(12)}
    header = json.dumps({k: {"dtype": "F32", "shape": v, "data_offsets": [0, 0]} for k, v in names.items()}).encode()
    f = tmp_path / "model.safetensors"
    f.write_bytes(len(header).to_bytes(8, "little") + header)
    assert checkpoint_config(f) == GPTConfig(n_layer=12, n_head=12, n_embd=768, n_ctx=8, vocab_size=16)
    (tmp_path / "weights.bin").write_bytes(b"PK\x03\x04")
    assert checkpoint_config(tmp_path / "weights.bin") is None  # only the tensors would tell
    assert checkpoint_config(tmp_path / "missing") is None  # loading says why


def test_known_config_follows_load_weights_order(tiny_checkpoint):
    assert known_config() == GPTConfig.from_name("gpt2")
    assert known_config("gpt2-medium", tiny_checkpoint) == GPTConfig.from_name("gpt2-medium")  # --model wins
    assert known_config(None, tiny_checkpoint) == TINY
    assert known_config(None, None, tiny_checkpoint / "config.json") == TINY
    with pytest.raises(UsageError, match="unknown model"):
        known_config("gpt5")


def test_checks_without_a_known_vocabulary():
    with pytest.raises(UsageError, match=r"top-k=0 must be an integer >= 1$"):
        check_top_k(0)
    check_top_k(10**9)  # no bound to hold it to
    with pytest.raises(UsageError, match="above the vocabulary of 97"):
        check_sampling(1.0, 98, 1.0, vocab_size=97)
    check_sampling(1.0, 97, 1.0, vocab_size=97)


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["predict", "x", "--top-k", "0"],
                                  ["generate", "x", "--max-new-tokens", "0"], ["predict", "x", "--top-k", "ten"]])
def test_help_and_argument_errors_answer_without_jax(argv):
    """Process-wide: what was imported, and how long the whole command took."""
    code = ("import sys\nfrom jaxgpt.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nprint('jax' in sys.modules, 'numpy' in sys.modules, rc, file=sys.stderr)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    took = time.perf_counter() - t0
    jax_loaded, _, rc = p.stderr.strip().splitlines()[-1].split()
    assert jax_loaded == "False", p.stderr
    assert rc == ("0" if "--help" in argv else "2")
    assert took < 1.5, f"{took:.2f} s"
