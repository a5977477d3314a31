"""``python -m reference predict``: the same random weights and table as ``jaxgpt predict``, and the same error
discipline (one ``error:`` line, exit 2, never a traceback)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxgpt.weights
import reference.weights
from jaxgpt import GPTConfig
from jaxgpt.checkpoint import save_quantized
from jaxgpt.cli import main as jaxgpt_main
from jaxgpt.quantize import quantize_state_dict
from reference.__main__ import main as ref_main
from reference.model import GPT2Config
from tests.conftest import TINY


@pytest.mark.parametrize("seed", [0, 7])
def test_both_draw_the_same_random_weights(seed):
    shape = dict(n_layer=3, n_head=2, n_embd=16, n_ctx=8, vocab_size=50)
    ours = jaxgpt.weights.random_state_dict(GPTConfig(**shape), seed)
    theirs = reference.weights.random_state_dict(GPT2Config(**shape), seed)
    assert list(ours) == list(theirs)  # the same tensors in the same (drawing) order
    for name in ours:
        assert theirs[name].dtype == ours[name].dtype == np.float32
        np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)


def _ref_table(out: str) -> tuple[list[int], list[float]]:
    lines = out.splitlines()
    rows = [l.split() for l in lines[lines.index(next(l for l in lines if l.lstrip().startswith("rank"))) + 1:][:10]]
    return [int(r[2]) for r in rows], [float(r[1]) for r in rows]


def test_default_tables_agree_on_random_weights(capsys, tmp_path):
    """No checkpoint, nothing in the HF cache: both fall back to random weights of the same seed."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY.to_hf_dict()))
    assert ref_main(["predict", "Dobby is", "--config", str(config)]) == 0
    ref_out, ref_err = capsys.readouterr()
    assert jaxgpt_main(["predict", "Dobby is", "--config", str(config), "--json"]) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    ids, logits = _ref_table(ref_out)
    assert ids == [c["id"] for c in d["top_k"]]
    assert max(abs(a - c["logit"]) for a, c in zip(logits, d["top_k"])) <= 0.0051  # the table's 2 decimals
    assert d["random_weights"] and "random weights (weights seed 0)" in ref_out.splitlines()[0]
    assert "meaningless" in ref_err and "meaningless" in err


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("q8")
    save_quantized(quantize_state_dict(jaxgpt.weights.random_state_dict(TINY, 1), TINY, "int8"), TINY, d)
    return d


@pytest.mark.parametrize("argv,needle", [
    (["predict", "x", "--checkpoint", "/no/such/file"], "checkpoint not found"),
    (["predict", "x", "--checkpoint", "{q}"], "quantized checkpoint"),
    (["predict", "x", "--checkpoint", "{q}/model.safetensors"], "quantized checkpoint"),
    (["predict", "x", "--checkpoint", "{tiny}", "--top-k", "0"], "1..50257"),
    (["predict", "word " * 70, "--checkpoint", "{tiny}"], "longer than the context of 64"),
    (["predict", "", "--checkpoint", "{tiny}"], "empty prompt"),
    (["predict", "x", "--config", "/no/config.json"], "cannot read config"),
    (["predict", "x", "--weights-seed", "-1"], "--weights-seed"),
    (["predict", "x", "--top-k", "ten"], "invalid int"),
    (["predict", "x", "--model", "gpt5"], "invalid choice"),
    (["predict"], "required"),
])
def test_bad_input_is_one_line_exit_2(capsys, tiny_checkpoint, quantized_dir, argv, needle):
    argv = [a.format(q=quantized_dir, tiny=tiny_checkpoint) for a in argv]
    try:
        code = ref_main(argv)
    except SystemExit as e:  # argparse's errors
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error:") and needle in err, err


def test_quantized_checkpoint_through_a_real_process(quantized_dir):
    p = subprocess.run([sys.executable, "-m", "reference", "predict", "x", "--checkpoint", str(quantized_dir)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.startswith("error:") and p.stderr.count("\n") == 1, p.stderr
