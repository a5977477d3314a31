"""Checkpoint loading: every supported layout loads to the same weights; every broken one fails clearly."""

import json
import pickle

import numpy as np
import pytest
import torch

from jaxgpt import GPTConfig, WeightsError, load_checkpoint, random_state_dict
from jaxgpt.engine import Engine
from jaxgpt.parity import reference_model
from jaxgpt.checkpoint import save_safetensors
from jaxgpt.weights import build_model, export_state_dict

CFG = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_ctx=32, vocab_size=211)


@pytest.fixture(scope="module")
def ref():
    """The oracle's own state dict (torch, HF Conv1D layout) — files below are saved from it."""
    return reference_model(CFG, random_state_dict(CFG, seed=4))


def _assert_same(sd, ref):
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert set(sd) == set(want)
    for k in want:
        np.testing.assert_array_equal(sd[k], want[k], err_msg=k)


def _write_config(d):
    (d / "config.json").write_text(json.dumps(CFG.to_hf_dict()))


def test_safetensors_saved_by_reference(tmp_path, ref):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    _write_config(tmp_path)
    cfg, sd = load_checkpoint(tmp_path)
    assert cfg == CFG
    _assert_same(sd, ref)


def test_pytorch_bin_with_hf_prefix_and_buffers(tmp_path, ref):
    sd = {f"transformer.{k}": v for k, v in ref.state_dict().items()}
    sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 32, 32)  # causal-mask buffer of old HF files
    sd["lm_head.weight"] = ref.state_dict()["wte.weight"].clone()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    _write_config(tmp_path)
    _, loaded = load_checkpoint(tmp_path)
    _assert_same(loaded, ref)


def test_nanogpt_linear_layout_is_transposed(tmp_path, ref):
    """nn.Linear checkpoints store (out, in); square c_proj must follow c_attn's layout."""
    sd = {}
    for k, v in ref.state_dict().items():
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            v = v.T.contiguous()
        sd[f"_orig_mod.transformer.{k}"] = v
    torch.save({"model": sd, "iter_num": 5}, tmp_path / "ckpt.pt")
    cfg, loaded = load_checkpoint(tmp_path / "ckpt.pt", CFG)
    _assert_same(loaded, ref)


def test_sharded_safetensors_index(tmp_path, ref):
    from safetensors.torch import save_file
    items = list(ref.state_dict().items())
    half = len(items) // 2
    shards = {"model-00001-of-00002.safetensors": dict(items[:half]),
              "model-00002-of-00002.safetensors": dict(items[half:])}
    weight_map = {}
    for fname, part in shards.items():
        save_file({k: v.contiguous() for k, v in part.items()}, str(tmp_path / fname))
        weight_map |= {k: fname for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _write_config(tmp_path)
    _, loaded = load_checkpoint(tmp_path)
    _assert_same(loaded, ref)


def test_bf16_safetensors(tmp_path, ref):
    from safetensors.torch import save_file
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in ref.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    _write_config(tmp_path)
    _, loaded = load_checkpoint(tmp_path)
    np.testing.assert_array_equal(loaded["wte.weight"],
                                  ref.state_dict()["wte.weight"].to(torch.bfloat16).float().numpy())


def test_transformers_checkpoint_when_installed(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=211)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    cfg, sd = load_checkpoint(tmp_path)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_ctx) == (2, 4, 64, 32)
    ids = np.random.default_rng(0).integers(0, 211, size=9)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0, -1].numpy()
    got = Engine(cfg, sd).last_logits([ids.tolist()])[0]
    assert np.max(np.abs(got - want)) < 1e-4


def test_preset_inferred_from_shapes_without_config(tmp_path):
    cfg = GPTConfig.from_name("gpt2", n_layer=12)
    small = GPTConfig(n_layer=12, n_head=12, n_embd=768, n_ctx=8, vocab_size=16)
    save_safetensors(random_state_dict(small), tmp_path, small)
    (tmp_path / "config.json").unlink()
    got, _ = load_checkpoint(tmp_path)
    assert (got.n_head, got.n_ctx, got.vocab_size) == (cfg.n_head, 8, 16)


def test_model_round_trip_through_export(tmp_path):
    sd = random_state_dict(CFG, seed=9)
    np.testing.assert_array_equal(export_state_dict(build_model(CFG, sd))["h.1.mlp.c_proj.weight"],
                                  sd["h.1.mlp.c_proj.weight"])


# ------------------------------------------------------------------------------------------------ failures

def test_missing_path():
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint("/nonexistent/model.safetensors")


def test_directory_without_weights(tmp_path):
    with pytest.raises(WeightsError, match="no model.safetensors"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x00" * 64, b"PK\x03\x04garbage"])
def test_garbage_files(tmp_path, content):
    for name in ("model.safetensors", "weights.bin"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError, match="cannot read|holds no"):
            load_checkpoint(tmp_path / name, CFG)


def test_truncated_safetensors(tmp_path):
    save_safetensors(random_state_dict(CFG), tmp_path, CFG)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="cannot read"):
        load_checkpoint(tmp_path)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"wte.weight": Evil()}))
    with pytest.raises(WeightsError, match=r"refused .*\(builtins\.print\)"):
        load_checkpoint(tmp_path, CFG)


def test_shape_mismatch_names_first_tensor(tmp_path):
    save_safetensors(random_state_dict(CFG), tmp_path, CFG)
    other = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_ctx=64, vocab_size=211)
    with pytest.raises(WeightsError, match=r"'wpe.weight' has shape \(32, 64\), expected \(64, 64\)"):
        load_checkpoint(tmp_path, other)


def test_missing_and_unexpected_tensors(tmp_path):
    sd = random_state_dict(CFG)
    del sd["h.1.ln_2.bias"]
    save_safetensors(sd, tmp_path, CFG)
    with pytest.raises(WeightsError, match="missing tensor 'h.1.ln_2.bias'"):
        load_checkpoint(tmp_path)
    sd = random_state_dict(CFG) | {"h.0.attn.rotary": np.zeros(3, np.float32)}
    save_safetensors(sd, tmp_path, CFG)
    with pytest.raises(WeightsError, match="unexpected tensor 'h.0.attn.rotary'"):
        load_checkpoint(tmp_path)


def test_not_gpt2_checkpoint(tmp_path):
    from safetensors.numpy import save_file
    save_file({"encoder.weight": np.ones((4, 4), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="not a GPT-2 checkpoint"):
        load_checkpoint(tmp_path)


def test_random_weights_are_seeded():
    a, b, c = random_state_dict(CFG, 1), random_state_dict(CFG, 1), random_state_dict(CFG, 2)
    np.testing.assert_array_equal(a["h.0.attn.c_attn.weight"], b["h.0.attn.c_attn.weight"])
    assert not np.array_equal(a["h.0.attn.c_attn.weight"], c["h.0.attn.c_attn.weight"])
    assert np.all(a["h.0.attn.c_attn.bias"] != 0)  # biases random too, so a dropped bias shows in parity
