import pytest

from jaxgpt import PRESETS, GPTConfig


@pytest.mark.parametrize("name,params", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                         ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_preset_parameter_counts_match_released_models(name, params):
    assert GPTConfig.from_name(name).num_params == params


def test_from_name_rejects_unknown_and_lists_choices():
    with pytest.raises(ValueError, match="gpt2-xl"):
        GPTConfig.from_name("gpt3")


def test_hf_prefix_and_overrides():
    cfg = GPTConfig.from_name("openai-community/gpt2", n_layer=2)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (2, 12, 768)


@pytest.mark.parametrize("kwargs", [dict(n_embd=100, n_head=3), dict(n_layer=0), dict(n_ctx=-1),
                                    dict(vocab_size=1.5)])
def test_invalid_shapes_raise(kwargs):
    with pytest.raises(ValueError):
        GPTConfig(**kwargs)


def test_config_is_frozen_and_round_trips_through_hf_dict():
    cfg = GPTConfig(n_layer=3, n_head=5, n_embd=80, n_ctx=77, vocab_size=1000)
    with pytest.raises(AttributeError):
        cfg.n_layer = 4
    assert GPTConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
