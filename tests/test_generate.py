"""Generation: the KV-cache loop against the PyTorch reference's full-recompute greedy, batches, stops, sampling."""

import numpy as np
import pytest

from jaxgpt import GPTConfig, random_state_dict
from jaxgpt.engine import Engine
from jaxgpt.errors import UsageError
from jaxgpt.generate import EOS_ID, generate
from jaxgpt.parity import reference_model
from tests.conftest import TINY

GEN_CONFIGS = {
    "h5_c80": GPTConfig(n_layer=2, n_head=5, n_embd=80, n_ctx=64, vocab_size=503),
    "h25_c200": GPTConfig(n_layer=2, n_head=25, n_embd=200, n_ctx=128, vocab_size=300),
    "h1_c64": GPTConfig(n_layer=3, n_head=1, n_embd=64, n_ctx=100, vocab_size=97),
}


def _prompts(cfg, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, cfg.vocab_size, size=n).tolist() for n in lengths]


BACKENDS = ["xla", "pallas-unfused", "pallas-fused"]


def _engine_kw(backend: str) -> dict:
    """The engine's backend and decode form: the XLA backend, and the Pallas backend's per-op decode step unfused
    and fused (split-K partials finished by the next kernel)."""
    if backend == "xla":
        return {"backend": "xla"}
    return {"backend": "pallas", "kernels": {"decode": backend.split("-")[1]}}


# Every config on the XLA backend; the fused Pallas decode form on one config by default (the unfused form's
# kernels are each the kernel tests'), both forms on two configs with --full (the
# interpreter is slow at 25 heads: h25_c200 runs on XLA only).
GREEDY_CASES = [("xla", name) for name in GEN_CONFIGS] + [
    ("pallas-fused", "h1_c64"),
    pytest.param("pallas-unfused", "h5_c80", marks=pytest.mark.slow),
    pytest.param("pallas-unfused", "h1_c64", marks=pytest.mark.slow),
    pytest.param("pallas-fused", "h5_c80", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend,name", GREEDY_CASES)
def test_greedy_40_tokens_equal_the_reference(backend, name):
    cfg = GEN_CONFIGS[name]
    backend = _engine_kw(backend)
    sd = random_state_dict(cfg, seed=7)
    engine = Engine(cfg, sd, **backend)
    rows = _prompts(cfg, (1, 5, 17))
    out = generate(engine, rows, max_new_tokens=40, stop_at_eos=False)
    ref = reference_model(cfg, sd)
    for row, gen in zip(rows, out):
        assert gen.finish_reason == "length" and len(gen.ids) == 40
        assert gen.ids == ref.greedy(row, 40)


@pytest.mark.parametrize("backend", ["xla", *(pytest.param(b, marks=pytest.mark.slow) for b in BACKENDS[1:])])
def test_each_row_of_a_mixed_batch_equals_the_prompt_alone(backend):
    cfg = GEN_CONFIGS["h5_c80"]
    engine = Engine(cfg, random_state_dict(cfg, seed=2), **_engine_kw(backend))
    rows = _prompts(cfg, (9, 1, 30), seed=4)  # 3 rows: padded to a batch of 4
    batch = generate(engine, rows, max_new_tokens=20, stop_at_eos=False)
    for row, gen in zip(rows, batch):
        assert generate(engine, [row], max_new_tokens=20, stop_at_eos=False)[0].ids == gen.ids


def test_same_buckets_do_not_recompile():
    engine = Engine(TINY, random_state_dict(TINY, seed=1))
    generate(engine, ["Dobby is"], max_new_tokens=5)
    n = engine.timings.compiles
    generate(engine, ["Dobby is a house"], max_new_tokens=3)  # 5 + 3 tokens: the same buckets (8, 8)
    assert engine.timings.compiles == n
    generate(engine, ["a", "b"], max_new_tokens=5)  # a new batch bucket
    assert engine.timings.compiles == n + 2


def _eos_engine():
    """ln_f outputs its bias alone and wte[EOS] points along it: EOS wins every step."""
    sd = random_state_dict(TINY, seed=3)
    sd["ln_f.weight"] = np.zeros_like(sd["ln_f.weight"])
    sd["ln_f.bias"] = np.ones_like(sd["ln_f.bias"])
    sd["wte.weight"][EOS_ID] = 1.0
    return Engine(TINY, sd)


def test_stops_at_endoftext_unless_told_not_to():
    engine = _eos_engine()
    out = generate(engine, ["Dobby is", "Hello"], max_new_tokens=10)
    assert [(g.ids, g.text, g.finish_reason) for g in out] == [([], "", "eos")] * 2
    assert out.decode_steps == 0  # every row done after the prefill: the loop never ran
    out = generate(engine, ["Dobby is"], max_new_tokens=4, stop_at_eos=False)
    assert out[0].ids == [EOS_ID] * 4 and out[0].finish_reason == "length"


def test_stop_string_cuts_the_text_and_streaming_matches():
    engine = Engine(TINY, random_state_dict(TINY, seed=5))
    full = generate(engine, ["Dobby is"], max_new_tokens=12, stop_at_eos=False)[0]
    stop = full.text[len(full.text) // 2:][:3]
    assert generate(engine, ["Dobby is"], max_new_tokens=12, stop_at_eos=False, stop=stop)[0].text == \
        full.text[:full.text.find(stop)]  # a single string works like a list of one
    pieces = []
    cut = generate(engine, ["Dobby is"], max_new_tokens=12, stop_at_eos=False, stop=[stop],
                   stream=lambda r, t: pieces.append(t))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.find(stop)] and stop not in cut.text
    assert "".join(pieces) == cut.text
    assert full.ids[:len(cut.ids)] == cut.ids


def test_chunked_decode_loop_equals_one_step_at_a_time(monkeypatch):
    """Chunks of 4 steps (then single steps for the rest) give the tokens, texts and stops of one step an iteration,
    including a row stopped by a stop string in the middle of a chunk while the other goes on."""
    import importlib
    gen = importlib.import_module("jaxgpt.generate")  # (the package's ``generate`` is the function)
    prompts, runs = ["Dobby is", "The cat sat"], {}
    for chunk in (1, 4):
        monkeypatch.setattr(gen, "DECODE_CHUNK", chunk)
        engine = Engine(TINY, random_state_dict(TINY, seed=5))  # (a fresh engine: its own compiled loop)
        full = generate(engine, prompts, max_new_tokens=14, stop_at_eos=False)
        stop = full[0].text[len(full[0].text) // 2:][:3]
        cut = generate(engine, prompts, max_new_tokens=14, stop_at_eos=False, stop=[stop])
        runs[chunk] = [(g.ids, g.text, g.finish_reason) for g in (*full, *cut)]
        assert cut[0].finish_reason == "stop" and len(cut[0].ids) < len(full[0].ids)
        assert all(len(g.ids) == 14 for g in full)
    assert runs[4] == runs[1]


def test_streamed_pieces_add_up_to_the_text():
    engine = Engine(TINY, random_state_dict(TINY, seed=6))
    seen = {0: [], 1: []}
    out = generate(engine, ["Dobby is", "The cat sat"], max_new_tokens=15, stop_at_eos=False,
                   stream=lambda r, t: seen[r].append(t))
    assert ["".join(seen[r]) for r in (0, 1)] == [g.text for g in out]


def test_sampling_is_reproducible_and_seeded():
    engine = Engine(TINY, random_state_dict(TINY, seed=8))
    kw = dict(max_new_tokens=16, temperature=1.0, top_k=100, top_p=0.95, stop_at_eos=False)
    a = generate(engine, ["Dobby is"], seed=1, **kw)[0].ids
    assert generate(engine, ["Dobby is"], seed=1, **kw)[0].ids == a
    assert generate(engine, ["Dobby is"], seed=2, **kw)[0].ids != a


@pytest.mark.parametrize("kw,needle", [
    ({"max_new_tokens": 0}, "max-new-tokens"),
    ({"max_new_tokens": 64}, "past the context"),
    ({"prompts": [""]}, "empty prompt"),
    ({"prompts": []}, "no prompts"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 2.0}, "top-p"),
    ({"prompts": ["Dobby", [1, 2]]}, "not a mix"),
])
def test_bad_arguments(kw, needle):
    engine = Engine(TINY, random_state_dict(TINY, seed=1))
    kw = {"prompts": ["Dobby is"], "max_new_tokens": 4, **kw}
    with pytest.raises(UsageError, match=needle):
        generate(engine, kw.pop("prompts"), **kw)



def test_top_k_above_the_vocabulary_is_refused():
    from jaxgpt.errors import UsageError
    engine = Engine(TINY, random_state_dict(TINY, seed=1))
    with pytest.raises(UsageError, match="vocabulary of 50257"):
        generate(engine, ["Dobby is"], top_k=50258, temperature=1.0)
