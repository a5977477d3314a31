"""Output that text cannot break: a prompt whose bytes are not UTF-8 still gives valid UTF-8 JSON (its bad bytes
become U+FFFD, with one notice), and plain output never dies on a character the terminal cannot show."""

import io
import json
import os
import subprocess
import sys

from jaxgpt.cli import _valid_text, build_parser, main

BAD = "\udcff\udcfe"  # what Python makes of the argv bytes b"\xff\xfe"


def _stdout(monkeypatch, encoding: str) -> io.TextIOWrapper:
    out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    return out


def test_argv_bytes_that_are_not_utf8_give_valid_json(tmp_path, tiny_checkpoint):
    """Through a real process: the bytes arrive in argv exactly as a shell passes $'\\xff\\xfe'."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONIOENCODING": "utf-8"}
    p = subprocess.run([sys.executable, "-m", "jaxgpt", "predict", b"\xff\xfe", "--json", "--top-k", "3",
                        "--checkpoint", str(tiny_checkpoint)], capture_output=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    d = json.loads(p.stdout.decode("utf-8"))  # strict: raises on any byte that is not UTF-8
    assert d["prompt"] == "\ufffd\ufffd" and d["completion"].startswith("\ufffd\ufffd")
    notices = [l for l in p.stderr.decode().splitlines() if "not valid UTF-8" in l]
    assert len(notices) == 1 and "U+FFFD" in notices[0]


def test_json_is_utf8_whatever_the_locale(capsys, monkeypatch, tiny_checkpoint):
    out = _stdout(monkeypatch, "latin-1")  # can hold neither U+FFFD nor most token texts
    assert main(["predict", BAD, "€ and more", "--json", "--checkpoint", str(tiny_checkpoint)]) == 0
    rows = [json.loads(line) for line in out.buffer.getvalue().decode("utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["\ufffd\ufffd", "€ and more"]
    assert capsys.readouterr().err.count("not valid UTF-8") == 1


def test_plain_output_survives_an_ascii_terminal(capsys, monkeypatch, tiny_checkpoint):
    out = _stdout(monkeypatch, "ascii")
    assert main(["predict", BAD + " café", "--checkpoint", str(tiny_checkpoint)]) == 0
    text = out.buffer.getvalue().decode("ascii")
    assert "next token:" in text and "caf?" in text


def test_generate_prompts_and_stop_strings_are_made_valid(capsys):
    args = build_parser().parse_args(["generate", BAD, "fine", "--stop", "\udce9", "--stop", "."])
    _valid_text(args)
    assert args.prompts == ["\ufffd\ufffd", "fine"] and args.stop == ["\ufffd", "."]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 arguments are not valid UTF-8" in err
