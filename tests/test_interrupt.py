"""Ctrl-C during generation: the decode returns to the host between calls, so an interrupt lands within a call or
two and the rows keep what they had; the CLI prints it and exits 130."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxgpt.generate as gen
from jaxgpt import GPTConfig, random_state_dict, save_safetensors
from jaxgpt.cli import main
from jaxgpt.engine import Engine
from jaxgpt.generate import GenerationInterrupted, generate
from tests.conftest import TINY

LONG = GPTConfig(n_layer=2, n_head=2, n_embd=64, n_ctx=1024)  # room for a long decode, still small


def _interrupt_after(monkeypatch, calls: int):
    """Raise KeyboardInterrupt from the host loop after ``calls`` decode calls (as a Ctrl-C would land)."""
    real = gen._Decoder.run
    seen = []

    def run(self, on_tokens):
        def wrapped(i0, i1, out):
            seen.append((i0, i1))
            if len(seen) == calls:
                raise KeyboardInterrupt
            return on_tokens(i0, i1, out)
        return real(self, wrapped)
    monkeypatch.setattr(gen._Decoder, "run", run)
    return seen


def test_interrupt_keeps_the_tokens_made_so_far(monkeypatch):
    engine = Engine(TINY, random_state_dict(TINY, seed=3))
    full = generate(engine, ["Dobby is", "The cat sat"], max_new_tokens=40, stop_at_eos=False)
    seen = _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt) as info:  # (a KeyboardInterrupt to code that knows no better)
        generate(engine, ["Dobby is", "The cat sat"], max_new_tokens=40, stop_at_eos=False)
    assert isinstance(info.value, GenerationInterrupted)
    part = info.value.result
    got = seen[-1][1]  # tokens every row had when the interrupt landed
    assert 1 <= got < 40
    for p, f in zip(part, full):
        assert p.finish_reason == "interrupted"
        assert p.ids == f.ids[:len(p.ids)] and len(p.ids) >= seen[0][0] + 1  # a prefix of the whole run
        assert p.text == f.text[:len(p.text)]


def test_calls_are_bounded_in_steps_and_time(monkeypatch):
    """Each call runs at most CALL_STEPS steps, and fewer when steps are slow: a call stays near CALL_SECONDS."""
    engine = Engine(LONG, random_state_dict(LONG, seed=1))
    spans = []
    real = gen._Decoder.run

    def run(self, on_tokens):
        def wrapped(i0, i1, out):
            spans.append(i1 - i0)
            return on_tokens(i0, i1, out)
        return real(self, wrapped)
    monkeypatch.setattr(gen._Decoder, "run", run)
    monkeypatch.setattr(gen, "CALL_STEPS", 32)
    out = generate(engine, ["Dobby is"], max_new_tokens=300, stop_at_eos=False)
    assert len(out[0].ids) == 300 and sum(spans) == 299
    assert max(spans) <= 32 and spans[0] <= gen.DECODE_CHUNK
    monkeypatch.setattr(gen, "CALL_SECONDS", 1e-6)  # every step "too slow": one step a call
    spans.clear()
    again = generate(engine, ["Dobby is"], max_new_tokens=40, stop_at_eos=False)
    assert again[0].ids == out[0].ids[:40]
    # (the second call was queued before the first's time was known)
    assert spans[:2] == [gen.DECODE_CHUNK] * 2 and spans[2:] == [1] * (len(spans) - 2)


def test_cli_json_prints_the_partial_rows_and_exits_130(monkeypatch, capsys, tiny_checkpoint):
    _interrupt_after(monkeypatch, 1)
    code = main(["generate", "Dobby is", "The cat", "--checkpoint", str(tiny_checkpoint), "--json",
                 "--max-new-tokens", "50", "--ignore-eos"])
    out, err = capsys.readouterr()
    assert code == 130
    d = json.loads(out)
    assert d["finish_reason"] == ["interrupted", "interrupted"]
    assert all(0 < len(ids) < 50 for ids in d["ids"])
    assert "interrupted" in err


def test_ctrl_c_during_a_streamed_generate(tmp_path):
    """SIGINT to a real process mid-stream: it stops within a few calls, the streamed text ends with a newline,
    exit status 130."""
    save_safetensors(random_state_dict(LONG, seed=2), tmp_path, LONG)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a shell's background job starts with SIGINT ignored and a child inherits that: spawn it with the default, as a
    # terminal's Ctrl-C finds it (set around the spawn: a preexec_fn would fork a multithreaded process)
    before = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        p = subprocess.Popen([sys.executable, "-m", "jaxgpt", "generate", "Dobby is", "--checkpoint", str(tmp_path),
                              "--max-new-tokens", "1000", "--ignore-eos"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    finally:
        if before is not None:  # (None: a handler set outside Python, left as it was)
            signal.signal(signal.SIGINT, before)
    first = p.stdout.read(len("Dobby is") + 1)  # the prompt comes with the first streamed text
    assert first.startswith(b"Dobby is"), (first, p.stderr.read()[-500:] if p.poll() is not None else "")
    p.send_signal(signal.SIGINT)
    t0 = time.perf_counter()
    rest, err = p.communicate(timeout=60)
    took = time.perf_counter() - t0
    assert p.returncode == 130, err.decode()[-500:]
    assert took < 5, took  # a call is ~0.1 s; start-up of the interpreter's exit included
    text = (first + rest).decode()
    assert text.endswith("\n") and b"interrupted" in err
    assert len(np.unique(list(text))) > 1 and len(text) < 20 * 1000  # some text, not the whole run
