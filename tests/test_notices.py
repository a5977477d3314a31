"""What a run says about itself: a quantized model's weight format in the header, a checkpoint quantized from random
weights warning whenever it loads, parity's verdict worded so that OK is not contradicted, JSON Lines documented."""

import json
from types import SimpleNamespace

from jaxgpt.checkpoint import weights_provenance
from jaxgpt.cli import build_parser, main
from jaxgpt.engine import load_weights
from jaxgpt.parity import PromptParity, format_report
from tests.conftest import TINY


def test_quantized_from_random_weights_says_so_when_loaded(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY.to_hf_dict()))
    q = tmp_path / "q8"
    assert main(["quantize", "--bits", "8", "--out", str(q), "--config", str(config), "--weights-seed", "4"]) == 0
    capsys.readouterr()
    assert weights_provenance(q) == {"source": "custom, random weights (weights seed 4)", "random": True}
    assert main(["predict", "Dobby is", "--checkpoint", str(q), "--top-k", "3"]) == 0
    out, err = capsys.readouterr()
    assert "int8 weights, float32" in out.splitlines()[0]  # the header names the weight format
    assert "quantized from random weights" in err and "meaningless" in err
    assert load_weights(None, q)[3] is True  # is_random: JSON's random_weights


def test_quantized_from_real_weights_loads_quietly(capsys, tmp_path, tiny_checkpoint):
    q = tmp_path / "q4"
    assert main(["quantize", "--bits", "4", "--group", "32", "--out", str(q), "--checkpoint", str(tiny_checkpoint)]) == 0
    capsys.readouterr()
    assert weights_provenance(q) == {"source": str(tiny_checkpoint), "random": False}
    _, _, source, random = load_weights(None, q)
    assert not random and source == str(q) and capsys.readouterr().err == ""


def _result(topk_jax, topk_ref, topk_ok):
    return PromptParity("Dobby is", 2.6e-3, 2.7e-2, 2.3e-3, topk_jax, topk_ref, topk_ok, [], [], None, False)


def test_parity_ok_is_not_contradicted_by_its_top_k_words():
    engine = SimpleNamespace(dtype_name="bfloat16")
    swapped = format_report([_result([1, 3, 2, 4], [1, 2, 3, 4], True)], engine)
    assert swapped.startswith("[OK]") and "ids equal up to near-ties (2 positions swapped" in swapped
    assert "bfloat16 rounding" in swapped and "differ" not in swapped
    assert "top-4 ids equal" in format_report([_result([1, 2, 3, 4], [1, 2, 3, 4], True)], engine)
    bad = format_report([_result([9, 2, 3, 4], [1, 2, 3, 4], False)], engine)
    assert bad.startswith("[MISMATCH]") and "differ beyond near-ties (1 position)" in bad


def test_json_lines_are_documented():
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    assert "JSON Lines" in " ".join(predict.format_help().split())
