"""Two seeds, two jobs: --seed samples (generate only), --weights-seed picks the random weights (every command
that may load them), so trying another sampling seed never swaps the model."""

from types import SimpleNamespace

import numpy as np
import pytest

import jaxgpt.engine
import jaxgpt.generate
from jaxgpt.cli import main
from jaxgpt.engine import load_weights
from jaxgpt.weights import random_state_dict
from tests.conftest import TINY


class _Stop(Exception):
    pass


@pytest.fixture
def seen(monkeypatch):
    """What the CLI hands to the loader and to generation (neither runs)."""
    got = {}

    def load_model(*args, **kw):
        got["weights_seed"] = kw["weights_seed"]
        return SimpleNamespace(ops=SimpleNamespace(interpreted=False))

    def generate(engine, prompts, **kw):
        got["seed"] = kw["seed"]
        raise _Stop

    monkeypatch.setattr(jaxgpt.engine, "load_model", load_model)
    monkeypatch.setattr(jaxgpt.generate, "generate", generate)
    return got


@pytest.mark.parametrize("flags,want", [
    ([], {"weights_seed": 0, "seed": 0}),
    (["--seed", "7"], {"weights_seed": 0, "seed": 7}),
    (["--weights-seed", "3"], {"weights_seed": 3, "seed": 0}),
    (["--seed", "7", "--weights-seed", "3"], {"weights_seed": 3, "seed": 7}),
])
def test_generate_keeps_the_two_seeds_apart(seen, flags, want):
    with pytest.raises(_Stop):
        main(["generate", "Dobby is", "--temperature", "0.8", *flags])
    assert seen == want


@pytest.mark.parametrize("command", [["predict", "x"], ["parity", "x"], ["quantize", "--bits", "8", "--out", "o"]])
def test_seed_where_nothing_samples_points_to_weights_seed(capsys, seen, command):
    assert main([*command, "--seed", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--weights-seed" in err, err
    assert seen == {}


def test_weights_seed_is_the_random_weights_seed(capsys):
    cfg, sd, source, random = load_weights(None, None, TINY, weights_seed=3)
    assert random and "weights seed 3" in source and "weights seed 3" in capsys.readouterr().err
    np.testing.assert_array_equal(sd["h.1.mlp.c_fc.weight"], random_state_dict(TINY, 3)["h.1.mlp.c_fc.weight"])
