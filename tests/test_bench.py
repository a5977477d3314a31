"""The bench command's CPU smoke run: it runs end to end, says it is a smoke run, and writes the documented files."""

import json

import pytest

from jaxgpt.cli import main

KERNEL_KEYS = {"kernel", "case", "impl", "median_ms", "min_ms", "max_ms", "rate", "unit", "max_err", "pct_ceiling",
               "method"}
MODEL_KEYS = {"case", "impl", "model", "batch", "median_ms", "min_ms", "rate", "unit", "compile_s", "method"}
ENV_KEYS = {"schema", "date", "mode", "dtype", "backend", "device", "device_count", "jax", "jaxlib", "flax", "torch",
            "transformers", "tokamax", "driver", "python"}


def _smoke(tmp_path_factory, what: str):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", what, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):  # the whole smoke run, ~35 s on two cores: its tests run with --full
    return _smoke(tmp_path_factory, "all")


@pytest.fixture(scope="module")
def smoke_kernels(tmp_path_factory):
    return _smoke(tmp_path_factory, "kernels")


@pytest.mark.slow
def test_smoke_run_writes_results_markdown_and_plots(smoke):
    out, res = smoke
    assert ENV_KEYS <= set(res["environment"]) and res["environment"]["mode"] == "smoke"
    assert "smoke" in res["note"] and "smoke" in (out / "results.md").read_text()
    for name in ("kernels.png", "model.png"):
        assert (out / name).stat().st_size > 1000
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # the bench's CPU smoke runs (~12 s and ~35 s on two cores): --full
def test_kernel_rows_schema(smoke_kernels):
    out, res = smoke_kernels
    assert ENV_KEYS <= set(res["environment"]) and res["environment"]["mode"] == "smoke"
    assert "smoke" in res["note"] and "smoke" in (out / "results.md").read_text()
    assert (out / "kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = res["kernels"]
    kinds = {r["kernel"] for r in rows}
    assert {"ceiling", "add_layer_norm", "attention", "decode_attention", "decode_matmul", "matmul", "mlp"} <= kinds
    for r in rows:
        assert KERNEL_KEYS <= set(r), r
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["rate"] > 0
    ours = [r for r in rows if r["impl"].startswith("pallas")]
    assert ours and all(r["max_err"] is not None and r["max_err"] < 0.1 for r in ours)


@pytest.mark.slow
def test_model_rows_schema(smoke):
    rows = smoke[1]["model"]
    assert {(r["case"], r["impl"]) for r in rows} >= {("prefill", "jaxgpt-xla"), ("prefill", "jaxgpt-pallas"),
                                                       ("decode", "jaxgpt-xla"), ("decode", "jaxgpt-pallas")}
    for r in rows:
        assert MODEL_KEYS <= set(r), r
        assert r["median_ms"] > 0 and r["rate"] > 0


def test_bench_bad_input(capsys, tmp_path):
    assert main(["bench", "--model", "gpt5"]) == 2
    assert "unknown model" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["bench", "--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["bench", "model", "--quantize", "int8,int3"]) == 2  # checked before anything is timed
    err = capsys.readouterr().err
    assert "unknown quantization 'int3'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_scaling_smoke_on_eight_cpu_devices(tmp_path):
    import jax

    from bench import scaling
    if len(jax.devices()) < 2:
        pytest.skip("needs several devices")
    assert scaling.main(["--smoke", "--reps", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "scaling.json").read_text())
    assert res["device_count"] == len(jax.devices()) and res["smoke"]
    dp = [r for r in res["rows"] if r["kind"] == "data_parallel"]
    tp = [r for r in res["rows"] if r["kind"] == "tensor_parallel"]
    assert [r["devices"] for r in dp][:2] == [1, 2] and dp[0]["prefill_efficiency"] == 1.0
    assert all(r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 for r in dp)
    assert tp and tp[0]["devices"] == 1 and all(r["ms_per_token"] > 0 for r in tp)
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_decode_case_counts_the_quantized_weight_bytes():
    """bench.decode's quantized rows: same schema, fewer bytes a step (int4 < int8 < float; the int8 head's copy
    replaces wte's bytes, which the step then reads one row of)."""
    from bench.decode import jax_case
    from bench.run import smoke_model
    model = smoke_model()
    rows = {q: jax_case(model, "xla", "bfloat16", 2, 4, 1, 0, q) for q in (None, "int8", "int4", "int8+head")}
    assert [r["impl"] for r in rows.values()] == ["jaxgpt-xla", "jaxgpt-xla-int8", "jaxgpt-xla-int4",
                                                  "jaxgpt-xla-int8+head"]
    assert all(r["all_tokens_valid"] and r["ms_per_token"] > 0 for r in rows.values())
    assert rows["int4"]["bytes_per_step"] < rows["int8"]["bytes_per_step"] < rows[None]["bytes_per_step"]
    from jaxgpt import GPTConfig
    cfg = GPTConfig.from_name(model)
    head = cfg.vocab_size * cfg.n_embd  # int8 head: a byte an entry instead of bf16's two, plus a scale a row of wte
    assert rows["int8+head"]["bytes_per_step"] == rows["int8"]["bytes_per_step"] - 2 * head + head + 4 * cfg.vocab_size


def test_hf_peer_harness_runs_on_cpu():
    """The HF transformers peer's timing harness (eager) on the smoke model: its row has the decode schema."""
    pytest.importorskip("transformers")
    from bench.decode import hf_case
    from bench.run import smoke_model
    r = hf_case(smoke_model(), "float32", 2, 12, 3, False)  # (enough tokens and reps to rise above timing noise)
    assert r["impl"] == "hf-eager" and r["ms_per_token"] > 0 and r["tokens"] == 12


@pytest.mark.skipif(__import__("jax").default_backend() == "gpu", reason="on a GPU the sweeps run for minutes")
@pytest.mark.parametrize("tool", ["bench.decode_sweep", "bench.attention_sweep", "bench.matmul_tiles",
                                  "bench.decode_layer", "bench.launch_barrier", "bench.lm_head"])
def test_gpu_only_sweeps_refuse_a_cpu_with_one_line(tool):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", tool], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "needs a GPU" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_attention_table_ranks_each_variant_and_flags_wrong_outputs(tmp_path):
    """bench.attention_table: a variant's best config is its fastest correct one; wrong or failed configs are flagged,
    never ranked; rows from several sweep files merge by case."""
    from bench.attention_table import summarise
    flops = 2 * 8 * 12 * 1024 * 1024 * 64
    a = {"rows": [{"case": "B8 T1024 H12", "flops": flops, "impls": {
        "mosaic kv128 s2 batch_outer": {"us": 56.0, "max_err": 0.01},
        "mosaic kv256 s2 batch_outer": {"us": 50.0, "max_err": 0.9},  # fast but wrong: never the best
        "mosaic kv128 s2 batch_outer knob": {"us": 52.0, "max_err": 0.01},
        "mosaic kv256 s3 batch_outer knob": {"us": 51.0, "max_err": 0.02},
        "cudnn": {"us": 45.0, "max_err": 0.01}}}]}
    b = {"rows": [{"case": "B8 T1024 H12", "flops": flops, "impls": {"tokamax_mosaic": {"error": "ValueError: x"}}}]}
    paths = []
    for name, d in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(d))
        paths.append(str(tmp_path / name))
    (row,) = summarise(paths)
    assert row["best"]["mosaic"] == (56.0, "kv128 s2")
    assert row["best"]["mosaic knob"] == (51.0, "kv256 s3")
    assert row["best"]["cudnn"] == (45.0, "")
    assert any("kv256 s2" in b and "max_err" in b for b in row["bad"])
    assert any(b.startswith("tokamax_mosaic") for b in row["bad"])
