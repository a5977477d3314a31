"""The bench command's CPU smoke run: it runs end to end, says it is a smoke run, and writes the documented files."""

import json

import pytest

from jaxgpt.cli import main

KERNEL_KEYS = {"kernel", "case", "impl", "median_ms", "min_ms", "max_ms", "rate", "unit", "max_err", "pct_ceiling",
               "method"}
MODEL_KEYS = {"case", "impl", "model", "batch", "median_ms", "min_ms", "rate", "unit", "compile_s", "method"}
ENV_KEYS = {"schema", "date", "mode", "dtype", "backend", "device", "device_count", "jax", "jaxlib", "flax", "torch",
            "transformers", "tokamax", "driver", "python"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "all", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_results_markdown_and_plots(smoke):
    out, res = smoke
    assert ENV_KEYS <= set(res["environment"]) and res["environment"]["mode"] == "smoke"
    assert "smoke" in res["note"] and "smoke" in (out / "results.md").read_text()
    for name in ("kernels.png", "model.png"):
        assert (out / name).stat().st_size > 1000
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_rows_schema(smoke):
    rows = smoke[1]["kernels"]
    kinds = {r["kernel"] for r in rows}
    assert {"ceiling", "add_layer_norm", "attention", "decode_attention", "decode_matmul", "matmul", "mlp"} <= kinds
    for r in rows:
        assert KERNEL_KEYS <= set(r), r
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["rate"] > 0
    ours = [r for r in rows if r["impl"].startswith("pallas")]
    assert ours and all(r["max_err"] is not None and r["max_err"] < 0.1 for r in ours)


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
                                  "bench.decode_layer", "bench.launch_barrier", "bench.pdl_chain",
                                  "bench.skeleton_once", "bench.block_skeleton_mgpu", "bench.lm_head"])
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


def test_block_skeleton_phases_match_the_reference_and_lower_for_cuda():
    """Session 11's persistent Mosaic GPU skeleton (bench/block_skeleton_mgpu.py): its producer ring and swap-AB
    products give every phase's partials in the interpreter (which has no global semaphores: barriers off there),
    and the kernel with its grid barriers lowers for CUDA at gpt2-xl's shapes."""
    pytest.importorskip("jax.experimental.pallas.mosaic_gpu")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench import block_skeleton_mgpu as sk
    from pallas_kernels.matvec_mgpu import matvec_mgpu_reference

    key = jax.random.key(1)
    shapes = [(128, 128), (256, 64), (128, 192)]
    ws = [jax.random.normal(jax.random.fold_in(key, i), s, jnp.bfloat16) for i, s in enumerate(shapes)]
    xs = [jax.random.normal(jax.random.fold_in(key, 9 + i), (8, s[0]), jnp.bfloat16) for i, s in enumerate(shapes)]
    same_w, same_x = [ws[0], ws[1][:128], ws[2]], [xs[0], xs[1][:, :128], xs[2]]  # every item two tiles
    cases = [(sk.skeleton(xs, ws, grid=3, stages=5, barriers=False, interpret=True), xs, ws),
             (sk.skeleton(xs, ws, grid=3, stages=2, barriers=False, eager=True, interpret=True), xs, ws),
             (sk.skeleton(xs, ws, grid=3, stages=4, barriers=False, eager=True, inflight=2, interpret=True), xs, ws),
             (sk.skeleton(same_x, same_w, grid=1, stages=4, barriers=False, consumers=2, eager=True, inflight=2,
                          interpret=True), same_x, same_w)]  # one block: the two consumers take items in turn
    for o, x, w in ((o, x, w) for outs, xs_, ws_ in cases for o, x, w in zip(outs, xs_, ws_)):
        want = matvec_mgpu_reference(x, w)
        assert not bool(jnp.isnan(o).any())
        np.testing.assert_allclose(np.asarray(o.sum(0).T), np.asarray(want), rtol=0,
                                   atol=1e-4 * float(jnp.abs(want).max()))
    with pytest.raises(ValueError, match="stages"):
        sk.skeleton(xs, ws, grid=3, stages=3, barriers=False, interpret=True)
    W = [jax.ShapeDtypeStruct((K, N), jnp.bfloat16) for K, N, _ in sk.SHAPES]
    X = [jax.ShapeDtypeStruct((8, K), jnp.bfloat16) for K, _, _ in sk.SHAPES]
    with pytest.raises(ValueError, match="semaphores"):
        sk.skeleton(xs, ws, grid=1, stages=5, interpret=True)
    with pytest.raises(ValueError, match="xload=False"):
        sk.skeleton(xs, ws, grid=1, stages=5, barriers=False, xload=False, interpret=True)
    with pytest.raises(ValueError, match="consumers"):
        sk.skeleton(xs, ws, grid=1, stages=4, barriers=False, consumers=2, interpret=True)
    for kw in ({"stages": 16}, {"stages": 16, "eager": True, "inflight": 3},
               {"stages": 20, "eager": True, "inflight": 4, "consumers": 2}):
        f = jax.jit(lambda xs, ws: sk.skeleton(xs, ws, grid=132, **kw))
        assert "mosaic_gpu" in f.trace(X, W).lower(lowering_platforms=("cuda",)).as_text()


def test_block_skeleton_quantized_weights_match_dequantized_reference_and_lower_for_cuda():
    """Session 13: the skeleton with int8 / int4 weights laid out (N, K), widened in registers as wgmma's A operand,
    per-row scales on the item's product: every phase's partials equal x @ dequantize(w) in the interpreter (64- and
    128-deep tiles; also with widening warpgroups), and its GPU variants (register-A wgmma with the upcast layouts,
    pipelined or not; widening warpgroups, storing in the WGMMA or the load layout; CUDA-core products) lower for
    CUDA at gpt2-xl-like shapes. Shapes whose K does not divide into the tiles, rings that do not divide among the
    wideners, and ``direct`` without wideners are refused."""
    pytest.importorskip("jax.experimental.pallas.mosaic_gpu")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench import block_skeleton_mgpu as sk
    from pallas_kernels.matvec_mgpu import matvec_mgpu_reference

    key = jax.random.key(3)
    shapes = ((256, 128, 2), (256, 64, 1), (512, 192, 2))
    ws = [jax.random.normal(jax.random.fold_in(key, i), (K, N), jnp.float32) for i, (K, N, _) in enumerate(shapes)]
    xs = [jax.random.normal(jax.random.fold_in(key, 9 + i), (8, K), jnp.bfloat16) for i, (K, _, _) in enumerate(shapes)]
    for bits, tk, kw in ((8, 128, {}), (4, 64, {}), (8, 128, {"widen": 2, "wstages": 4, "scale_at": "start"})):
        qs = sk.quantized(ws, bits)
        assert all(q.shape == w.shape[::-1] and q.dtype == (jnp.int8 if bits == 8 else jnp.int4)
                   for (q, _), w in zip(qs, ws))
        outs = sk.skeleton(xs, [q for q, _ in qs], scales=[s for _, s in qs], grid=2, stages=4, barriers=False,
                           eager=True, inflight=2, qtile_k=tk, shapes=shapes, interpret=True, **kw)
        for o, x, (q, s), (K, N, splits) in zip(outs, xs, qs, shapes):
            assert o.shape == (splits, N, 8) and not bool(jnp.isnan(o).any())
            deq = (q.astype(jnp.float32) * s[:, None]).T  # (K, N)
            assert float(jnp.abs(deq - ws[shapes.index((K, N, splits))]).max()) <= float(s.max()) / 2 + 1e-6
            want = matvec_mgpu_reference(x, deq)
            np.testing.assert_allclose(np.asarray(o.sum(0).T), np.asarray(want), rtol=0,
                                       atol=1e-4 * float(jnp.abs(want).max()))
    with pytest.raises(ValueError, match="multiple of 128"):
        qs = sk.quantized(ws[:1], 8)
        sk.skeleton(xs[:1], [qs[0][0]], scales=[qs[0][1]], grid=1, stages=4, barriers=False, eager=True,
                    qtile_k=128, shapes=((256, 128, 4),), interpret=True)
    sh = ((1536, 4608, 4), (1536, 1536, 4), (1536, 6144, 4), (6144, 1536, 16))
    X = [jax.ShapeDtypeStruct((8, K), jnp.bfloat16) for K, _, _ in sh]
    S = [jax.ShapeDtypeStruct((N,), jnp.float32) for _, N, _ in sh]
    for dt, kw in ((jnp.int8, {"cast_first": True}), (jnp.int8, {"pipelined": True}), (jnp.int4, {}),
                   (jnp.int8, {"matvec": True, "stages": 18}), (jnp.int4, {"scale_at": "start"}),
                   (jnp.int8, {"widen": 2, "wstages": 6, "stages": 8, "scale_at": "start"}),
                   (jnp.int8, {"widen": 2, "wstages": 6, "stages": 8, "direct": True}),
                   (jnp.int4, {"widen": 1, "wstages": 6, "stages": 8, "direct": True})):
        W = [jax.ShapeDtypeStruct((N, K), dt) for K, N, _ in sh]
        kw = {"stages": 24, **kw}
        f = jax.jit(lambda xs, ws, ss: sk.skeleton(xs, ws, scales=ss, grid=132, eager=True, inflight=4,
                                                   consumers=2, qtile_k=128, shapes=sh, **kw))
        assert "mosaic_gpu" in f.trace(X, W, S).lower(lowering_platforms=("cuda",)).as_text()
    with pytest.raises(ValueError, match="widen"):
        sk.skeleton(xs, [q for q, _ in qs], scales=[s for _, s in qs], grid=1, stages=4, barriers=False, eager=True,
                    qtile_k=128, shapes=shapes, widen=2, wstages=3, interpret=True)
    with pytest.raises(ValueError, match="direct needs widen"):
        sk.skeleton(xs, [q for q, _ in qs], scales=[s for _, s in qs], grid=1, stages=4, barriers=False, eager=True,
                    qtile_k=128, shapes=shapes, direct=True, interpret=True)
