"""Weight-only quantization of the model: quality against the float model, both backends, the checkpoint format
and its validation, the CLI."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxgpt import GPTConfig, random_state_dict
from jaxgpt.cli import main
from jaxgpt.engine import Engine, load_model
from jaxgpt.errors import JaxGPTError
from jaxgpt.generate import generate
from jaxgpt.checkpoint import Scheme, WeightsError, load_checkpoint, save_quantized, scheme_of
from jaxgpt.parity import agreement
from jaxgpt.quantize import quantize_state_dict, run_bytes

CFG = GPTConfig(n_layer=2, n_head=4, n_embd=128, n_ctx=64, vocab_size=503)
# Stated thresholds (random weights, 3 prompts x 20 positions): top-1 agreement with the float model.
TOP1_MIN = {"int8": 0.95, "int4": 0.75}


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(CFG, seed=3)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(0, CFG.vocab_size, 20).tolist() for _ in range(3)]


@pytest.mark.parametrize("scheme", ["int4", pytest.param("int8", marks=pytest.mark.slow)])
def test_quantized_model_follows_the_float_model(sd, prompts, scheme):
    r = agreement(Engine(CFG, sd), Engine(CFG, sd, quantize=scheme), prompts, steps=16)
    print(scheme, r)
    assert r["finite"] and r["positions"] == 60
    assert r["top1_agreement"] >= TOP1_MIN[scheme]
    assert r["mean_abs_dlogit"] > 0  # the weights really are quantized
    assert r["greedy_token_agreement"] >= 0.9


@pytest.mark.slow
def test_int8_is_closer_than_int4(sd, prompts):
    ref = Engine(CFG, sd)
    d8 = agreement(ref, Engine(CFG, sd, quantize="int8"), prompts, steps=0)["mean_abs_dlogit"]
    d4 = agreement(ref, Engine(CFG, sd, quantize="int4"), prompts, steps=0)["mean_abs_dlogit"]
    assert 0 < d8 < d4


@pytest.mark.slow  # (the int kernels: test_kernels_quant_matmul; int8 in the decode block: test_kernels_decode_layer)
@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_pallas_kernels_match_the_xla_dequantize_path(sd, prompts, scheme):
    """The quantized matmul kernels (interpret mode here) against XLA's dequantize-then-dot, prefill and decode."""
    xla, pallas = Engine(CFG, sd, quantize=scheme), Engine(CFG, sd, quantize=scheme, backend="pallas")
    np.testing.assert_allclose(pallas.last_logits(prompts), xla.last_logits(prompts), atol=2e-4, rtol=0)
    kw = dict(max_new_tokens=6, stop_at_eos=False)
    assert [g.ids for g in generate(pallas, prompts, **kw)] == [g.ids for g in generate(xla, prompts, **kw)]


@pytest.mark.slow  # (the Pallas int8 head in decode: test_kernels_decode_layer's int8+head model test)
def test_int8_lm_head_copy_on_both_backends(sd, prompts):
    xla, pallas = Engine(CFG, sd, quantize="int8+head"), Engine(CFG, sd, quantize="int8+head", backend="pallas")
    np.testing.assert_allclose(pallas.last_logits(prompts), xla.last_logits(prompts), atol=2e-4, rtol=0)


@pytest.mark.slow  # (the +head checkpoint path: test_checkpoint_round_trip_loads_the_same_model[int4+head])
def test_int8_lm_head_copy(sd, prompts):
    """``+head``: the head reads an int8 (C, V) copy of wte (the lookup keeps the float wte); the float model is
    followed, and a step reads fewer head bytes (C·V·1 + 4·V instead of C·V·2)."""
    ref = Engine(CFG, sd)
    xla = Engine(CFG, sd, quantize="int8+head")
    assert xla.quantization == Scheme(8, None, True)
    r = agreement(ref, xla, prompts, steps=8)
    assert r["top1_agreement"] >= TOP1_MIN["int8"] and r["finite"]
    d_plain = agreement(ref, Engine(CFG, sd, quantize="int8"), prompts, steps=0)["mean_abs_dlogit"]
    assert r["mean_abs_dlogit"] > d_plain  # the head's own rounding shows
    q = quantize_state_dict(sd, CFG, "int8+head")
    assert q["lm_head.weight"].shape == (CFG.n_embd, CFG.vocab_size) and q["lm_head.weight"].dtype == np.int8
    assert q["lm_head.weight"].nbytes + q["lm_head.scale"].nbytes < sd["wte.weight"].size * 2


@pytest.mark.parametrize("scheme", ["int8", "int4", "int4+head"])
def test_checkpoint_round_trip_loads_the_same_model(sd, prompts, tmp_path, scheme):
    q = quantize_state_dict(sd, CFG, scheme)
    save_quantized(q, CFG, tmp_path)
    meta = json.loads((tmp_path / "quantization.json").read_text())
    assert meta["bits"] == Scheme.parse(scheme).bits and (meta["lm_head"] == "int8 copy") == scheme.endswith("head")
    cfg, back = load_checkpoint(tmp_path)
    assert cfg == CFG and scheme_of(back, cfg) == Scheme.parse(scheme)
    for k, v in q.items():
        np.testing.assert_array_equal(back[k], v)
    want = Engine(CFG, sd, quantize=scheme).last_logits(prompts)
    np.testing.assert_array_equal(Engine(cfg, back).last_logits(prompts), want)
    np.testing.assert_array_equal(load_model(None, checkpoint=tmp_path).last_logits(prompts), want)


def test_quantization_shrinks_the_projections(sd):
    before = run_bytes(sd, CFG)
    for scheme, most in (("int8", 0.53), ("int4", 0.30)):  # half / a quarter, plus the scales
        after = run_bytes(quantize_state_dict(sd, CFG, scheme), CFG)
        assert after["rest"] == before["rest"]
        assert after["projections"] <= most * before["projections"]


def _tamper(src, dst, fn):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.pop("h.1.mlp.c_fc.scale"), "missing tensor 'h.1.mlp.c_fc.scale'"),
    (lambda t: t.__setitem__("h.0.attn.c_proj.scale", t["h.0.attn.c_proj.scale"][:, :-1]), "has shape"),
    (lambda t: t.__setitem__("h.0.mlp.c_proj.weight", t["h.0.mlp.c_proj.weight"].astype(np.int16)), "dtype"),
    (lambda t: t.__setitem__("h.1.attn.c_attn.scale", -t["h.1.attn.c_attn.scale"]), "finite and positive"),
    (lambda t: t.__setitem__("h.0.attn.c_attn.extra", np.zeros(3, np.float32)), "unexpected tensor"),
    (lambda t: t.__setitem__("h.0.attn.c_attn.scale", np.ones((3, 3 * CFG.n_embd), np.float32)), "has shape"),
])
def test_tampered_checkpoints_are_rejected(sd, tmp_path, edit, needle):
    good = tmp_path / "good"
    save_quantized(quantize_state_dict(sd, CFG, "int4"), CFG, good)
    bad = _tamper(good, tmp_path / "bad", edit)
    with pytest.raises(WeightsError, match=needle):
        load_checkpoint(bad)


def test_a_state_dict_whose_scales_give_no_group_is_rejected(sd):
    q = quantize_state_dict(sd, CFG, "int4")
    q["h.0.attn.c_attn.scale"] = np.ones((3, 3 * CFG.n_embd), np.float32)  # 64 packed rows / 3 scale rows
    with pytest.raises(WeightsError, match="no valid group size"):
        Engine(CFG, q)


def test_a_scheme_file_that_disagrees_with_the_tensors_is_rejected(sd, tmp_path):
    save_quantized(quantize_state_dict(sd, CFG, "int8"), CFG, tmp_path)
    meta = json.loads((tmp_path / "quantization.json").read_text())
    (tmp_path / "quantization.json").write_text(json.dumps({**meta, "bits": 4, "group_size": 128}))
    with pytest.raises(WeightsError, match="dtype|shape"):
        load_checkpoint(tmp_path)
    (tmp_path / "quantization.json").write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable"):
        load_checkpoint(tmp_path)


def test_bad_schemes_and_combinations_are_clear_errors(sd, tmp_path):
    with pytest.raises(JaxGPTError, match="unknown quantization"):
        Engine(CFG, sd, quantize="int3")
    with pytest.raises(JaxGPTError, match="power of two"):
        Scheme.parse("int4", 48)
    q = quantize_state_dict(sd, CFG, "int8")
    with pytest.raises(JaxGPTError, match="already quantized as int8"):
        Engine(CFG, q, quantize="int4")
    with pytest.raises(JaxGPTError, match="already quantized"):
        quantize_state_dict(q, CFG, "int4")
    with pytest.raises(JaxGPTError, match="already quantized as int8"):
        Engine(CFG, q, quantize="int8+head")  # the head is part of the scheme
    with pytest.raises(JaxGPTError, match="optionally \\+head"):
        Scheme.parse("int8+tail")


# ----------------------------------------------------------------------------------------------- CLI

def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_quantize_then_generate(capsys, tiny_checkpoint, tmp_path):
    out_dir = tmp_path / "q4"
    code, out, err = run(capsys, "quantize", "--checkpoint", str(tiny_checkpoint), "--bits", "4", "--group", "32",
                         "--out", str(out_dir), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["scheme"]["bits"] == 4 and info["scheme"]["group_size"] == 32
    assert info["bytes"]["projections"] < 0.35 * info["bf16_bytes"]["projections"]  # 1/4 + scales
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "model.safetensors", "quantization.json"]
    code, out, err = run(capsys, "generate", "Dobby is", "--checkpoint", str(out_dir), "--max-new-tokens", "4",
                         "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["quantization"] == "int4" and len(d["ids"][0]) == 4


@pytest.mark.slow  # (quantize through the CLI: test_cli_quantize_then_generate; the quality: the tests above)
def test_cli_parity_quantize_reports_quality(capsys, tiny_checkpoint):
    code, out, err = run(capsys, "parity", "Dobby is a house elf", "--checkpoint", str(tiny_checkpoint),
                         "--quantize", "int8", "--steps", "8", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["quantization"] == "int8" and d["ok"]
    assert d["top1_agreement"] >= 0.9 and 0 < d["mean_abs_dlogit"] and len(d["first_divergence"]) == 1


@pytest.mark.parametrize("argv,needle", [
    (["quantize", "--bits", "3", "--out", "x"], "invalid choice"),
    (["quantize", "--bits", "4", "--group", "48", "--out", "x"], "power of two"),
    (["quantize", "--bits", "8", "--group", "64", "--out", "x"], "int4 only"),
    (["predict", "hi", "--quantize", "int8", "--tensor-parallel", "2"], "quantized weights"),
    (["predict", "hi", "--quantize", "int5"], "invalid choice"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, tiny_checkpoint, argv, needle):
    try:
        code = main([*argv, "--checkpoint", str(tiny_checkpoint)])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_cli_quantize_out_is_a_file(capsys, tiny_checkpoint, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run(capsys, "quantize", "--checkpoint", str(tiny_checkpoint), "--bits", "8", "--out", str(f))
    assert code == 2 and "not a directory" in err and f.read_text() == "x"
