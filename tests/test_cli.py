"""The CLI as a user runs it: the seed's table, JSON, parity, and every bad input as one line with exit 2."""

import json
import os
import subprocess
import sys

import pytest

from jaxgpt.cli import main
from tests.conftest import ON_GPU


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_table(capsys, tiny_checkpoint):
    code, out, err = run(capsys, "predict", "Dobby is", "--checkpoint", str(tiny_checkpoint))
    assert code == 0, err
    lines = out.splitlines()
    table = lines[lines.index(next(l for l in lines if l.strip().startswith("rank"))) + 1:][:10]
    assert len(table) == 10
    logits = [float(l.split()[1]) for l in table]
    assert logits == sorted(logits, reverse=True)
    assert all("'" in l or '"' in l for l in table)  # text shown repr-quoted
    assert lines[-2].startswith("next token: ")
    assert lines[-1].startswith("Dobby is")


def test_predict_json(capsys, tiny_checkpoint):
    code, out, _ = run(capsys, "predict", "Dobby is", "--checkpoint", str(tiny_checkpoint), "--json",
                       "--top-k", "5")
    assert code == 0
    d = json.loads(out)
    assert d["prompt"] == "Dobby is" and d["prompt_ids"] == [35, 11369, 318]
    assert len(d["top_k"]) == 5 and {"id", "logit", "text"} <= set(d["top_k"][0])
    assert d["next_token"]["id"] == d["top_k"][0]["id"]
    assert d["completion"] == "Dobby is" + d["next_token"]["text"]
    assert {"model", "dtype", "device", "backend"} <= set(d)


def test_predict_batch_json_lines_in_order(capsys, tiny_checkpoint):
    code, out, _ = run(capsys, "predict", "a b c d e f g h i j k", "Hi", "--checkpoint", str(tiny_checkpoint),
                       "--json")
    assert code == 0
    rows = [json.loads(l) for l in out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a b c d e f g h i j k", "Hi"]
    # batching must not change a row's answer
    _, alone, _ = run(capsys, "predict", "Hi", "--checkpoint", str(tiny_checkpoint), "--json")
    solo = json.loads(alone)["top_k"]
    assert [c["id"] for c in solo] == [c["id"] for c in rows[1]["top_k"]]
    assert max(abs(a["logit"] - b["logit"]) for a, b in zip(solo, rows[1]["top_k"])) < 1e-5


def test_predict_verbose_reports_compile_and_run(capsys, tiny_checkpoint):
    code, _, err = run(capsys, "predict", "Dobby is", "--checkpoint", str(tiny_checkpoint), "-v",
                       "--dtype", "bfloat16")
    assert code == 0
    assert "compile" in err and "run" in err and "bfloat16" in err


def test_parity_passes(capsys, tiny_checkpoint):
    code, out, err = run(capsys, "parity", "Dobby is", "Hello there", "--checkpoint", str(tiny_checkpoint),
                         "--steps", "4")
    assert code == 0, out + err
    assert "PASS" in out and "max |Δlogit|" in out


@pytest.mark.slow  # (parity through the CLI: test_parity_passes)
def test_parity_json(capsys, tiny_checkpoint):
    code, out, _ = run(capsys, "parity", "Dobby is", "--checkpoint", str(tiny_checkpoint), "--steps", "3",
                       "--json", "--dtype", "bfloat16")
    d = json.loads(out)
    assert code == 0 and d["ok"] and d["results"][0]["max_abs_diff"] <= d["results"][0]["tolerance"]
    assert len(d["results"][0]["greedy_jax"]) == 3


LONG = "word " * 100  # > n_ctx=64 of the tiny checkpoint


@pytest.mark.parametrize("argv,needle", [
    (["predict", ""], "empty prompt"),
    (["predict", LONG], "longer than the context"),
    (["predict", "x", "--top-k", "0"], "top-k"),
    (["predict", "x", "--top-k", "-3"], "top-k"),
    (["predict", "x", "--top-k", "50258"], "top-k"),
    (["predict", "x", "--top-k", "ten"], "invalid int"),
    (["predict", "x", "--dtype", "float64"], "invalid choice"),
    (["predict", "x", "--device", "tpu"], "invalid choice"),
    (["predict", "x", "--backend", "cuda"], "invalid choice"),
    (["parity", "x", "--steps", "-1"], "--steps"),
    (["predict"], "required"),
])
def test_bad_input_is_one_line_exit_2(capsys, tiny_checkpoint, argv, needle):
    with pytest.raises(SystemExit) if "invalid" in needle or needle == "required" else _nullcontext() as exc:
        code = main(argv + ["--checkpoint", str(tiny_checkpoint)])
    if exc is not None:
        code = exc.value.code
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error:") and needle in err, err


class _nullcontext:
    value = None

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("make", ["missing", "empty_dir", "garbage", "wrong_shape", "unknown_model",
                                  "unreadable"])
def test_bad_checkpoints_are_one_line_exit_2(capsys, tmp_path, tiny_checkpoint, make):
    argv = ["predict", "Dobby is"]
    if make == "missing":
        argv += ["--checkpoint", str(tmp_path / "nope")]
    elif make == "empty_dir":
        argv += ["--checkpoint", str(tmp_path)]
    elif make == "garbage":
        (tmp_path / "model.safetensors").write_bytes(b"\x12\x00\x00\x00\x00\x00\x00\x00{not json")
        argv += ["--checkpoint", str(tmp_path / "model.safetensors")]
    elif make == "wrong_shape":
        argv += ["--checkpoint", str(tiny_checkpoint / "model.safetensors"), "--model", "gpt2"]
    elif make == "unknown_model":
        argv += ["--model", "gpt5"]
    elif make == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        f = tmp_path / "model.safetensors"
        f.write_bytes(b"x")
        f.chmod(0)
        argv += ["--checkpoint", str(f)]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error:"), err
    assert "Traceback" not in err


@pytest.mark.skipif(ON_GPU, reason="this machine has a GPU")
def test_device_gpu_without_gpu(capsys, tiny_checkpoint):
    code, out, err = run(capsys, "predict", "x", "--device", "gpu", "--checkpoint", str(tiny_checkpoint))
    assert code == 2 and "no GPU" in err and err.count("\n") == 1


def test_entry_point_default_runs_offline_with_loud_notice(tmp_path):
    """The seed's flow exactly as a user types it, in a fresh process with no weights and no network."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", "jaxgpt", "predict", "Dobby is"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "random weights" in p.stderr and "meaningless" in p.stderr
    assert "next token:" in p.stdout and p.stdout.count("\n") >= 13


def test_entry_point_bad_input_has_no_traceback():
    p = subprocess.run([sys.executable, "-m", "jaxgpt", "predict", "x", "--checkpoint", "/no/such/file"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0


def test_reference_cli_prints_the_same_table(tiny_checkpoint, capsys):
    from reference.__main__ import main as ref_main
    assert ref_main(["predict", "Dobby is", "--checkpoint", str(tiny_checkpoint)]) == 0
    ref_out = capsys.readouterr().out
    code, out, _ = run(capsys, "predict", "Dobby is", "--checkpoint", str(tiny_checkpoint), "--json")
    d = json.loads(out)
    ref_ids = [int(l.split()[2]) for l in ref_out.splitlines()[3:13]]
    assert ref_ids == [c["id"] for c in d["top_k"]]


def test_predict_pallas_backend_on_cpu(capsys, tiny_checkpoint):
    """`--backend pallas --device cpu` runs the kernels in Pallas' interpreter and agrees with the XLA backend."""
    code, out, err = run(capsys, "predict", "Dobby is", "--checkpoint", str(tiny_checkpoint), "--json",
                         "--backend", "pallas", "--device", "cpu")
    assert code == 0, err
    _, ref, _ = run(capsys, "predict", "Dobby is", "--checkpoint", str(tiny_checkpoint), "--json")
    got, want = json.loads(out), json.loads(ref)
    assert ON_GPU or err.count("Pallas' interpreter") == 1  # said once, on stderr
    assert got["backend"] == "pallas"
    assert [c["id"] for c in got["top_k"]] == [c["id"] for c in want["top_k"]]
    assert max(abs(a["logit"] - b["logit"]) for a, b in zip(got["top_k"], want["top_k"])) < 1e-4


def test_generate_streams_the_prompt_and_its_continuation(capsys, tiny_checkpoint):
    code, out, err = run(capsys, "generate", "Dobby is", "--checkpoint", str(tiny_checkpoint),
                         "--max-new-tokens", "6", "--ignore-eos")
    assert code == 0, err
    assert out.startswith("Dobby is") and out.endswith("\n") and len(out) > len("Dobby is\n")


def test_generate_json_and_batch_file_in_input_order(capsys, tmp_path, tiny_checkpoint):
    prompts = ["The cat sat on", "", "Dobby is", "Hello"]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(prompts) + "\n")
    code, out, err = run(capsys, "generate", "--batch-file", str(f), "--checkpoint", str(tiny_checkpoint),
                         "--max-new-tokens", "5", "--json", "--ignore-eos")
    assert code == 0, err
    d = json.loads(out)
    want = [p for p in prompts if p]
    assert d["prompts"] == want and len(d["ids"]) == 3 and all(len(i) == 5 for i in d["ids"])
    assert all(isinstance(t, int) for i in d["ids"] for t in i)
    assert d["tokens_per_s"] > 0 and d["finish_reason"] == ["length"] * 3
    # (that a batch's rows are each prompt's alone: test_generate's mixed-batch test)


@pytest.mark.parametrize("extra,needle", [
    (["--max-new-tokens", "0"], "max-new-tokens"),
    (["--max-new-tokens", "70"], "past the context"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "1.5"], "top-p"),
    (["--top-k", "-2"], "top-k"),
    (["--batch-file", "/nonexistent/prompts.txt"], "cannot read"),
])
def test_generate_bad_input_is_one_line_exit_2(capsys, tiny_checkpoint, extra, needle):
    argv = ["generate"] + ([] if "--batch-file" in extra else ["Dobby is"]) + extra
    code = main(argv + ["--checkpoint", str(tiny_checkpoint)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error:") and needle in err, err


@pytest.mark.parametrize("content,needle", [("\n  \n", "no prompts"), (b"\xff\xfe\x00bad", "cannot read")])
def test_generate_bad_batch_file(capsys, tmp_path, tiny_checkpoint, content, needle):
    f = tmp_path / "p.txt"
    f.write_bytes(content.encode() if isinstance(content, str) else content)
    code = main(["generate", "--batch-file", str(f), "--checkpoint", str(tiny_checkpoint)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and needle in err and err.count("\n") == 1, err
    code = main(["generate", "x", "--batch-file", str(f), "--checkpoint", str(tiny_checkpoint)])
    assert code == 2 and "not both" in capsys.readouterr().err
