"""The tuning tables and the decode sweep that fills them (the sweep's timing is the GPU's; here a stand-in clock)."""

import time

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import autotune, tuning


@pytest.mark.parametrize("cls,shape", [
    (tuning.MatmulConfig, dict(m=1, n=6400, k=1600, dtype=jnp.bfloat16)),
    (tuning.QuantMatmulConfig, dict(m=1, n=6400, k=1600, bits=8, dtype=jnp.bfloat16)),
    (tuning.QuantMatmulConfig, dict(m=1, n=1600, k=6400, bits=4, dtype=jnp.bfloat16))])
def test_decode_candidates_fit_shared_memory_and_launch_enough_programs(cls, shape):
    args = [shape[k] for k in ("m", "n", "k")] + ([shape["bits"]] if "bits" in shape else []) + [shape["dtype"]]
    cands = cls.candidates(*args)
    assert len(cands) > 20 and len(set(cands)) == len(cands)
    w_bytes = shape.get("bits", 16) / 8
    for c in cands:
        assert c.num_stages * (c.block_k * c.block_n * w_bytes + 16 * c.block_k * 2) <= 200 * 1024
        assert 32 <= -(-shape["n"] // c.block_n) * c.split_k <= 1100


def test_lookup_reads_the_table_and_falls_back_to_the_heuristic(monkeypatch):
    key = tuning.shape_key(m=1, n=96, k=64, bits=8, dtype=jnp.bfloat16)
    table = {"QuantMatmulConfig": {key: {"block_m": 16, "block_n": 32, "block_k": 64, "num_warps": 4,
                                         "num_stages": 2, "split_k": 2}}}
    monkeypatch.setattr(tuning, "load_table", lambda name: table)
    assert tuning.lookup(tuning.QuantMatmulConfig, m=1, n=96, k=64, bits=8, dtype=jnp.bfloat16).block_n == 32
    got = tuning.lookup(tuning.QuantMatmulConfig, m=1, n=96, k=64, bits=4, dtype=jnp.bfloat16)
    assert got == tuning.QuantMatmulConfig.heuristic(1, 96, 64, 4, jnp.bfloat16)


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_sweep_decode_ranks_configs_and_keys_them_for_lookup(fmt, monkeypatch):
    """Every format at a small width (interpret mode; the wall clock stands in for CUPTI): the heuristic always
    runs, results come fastest first, and the keys are the ones ``lookup`` builds."""
    monkeypatch.setitem(autotune.WIDTH_HEADS, "tiny", (256, 4))
    monkeypatch.setattr(autotune, "L2_BYTES", 1)  # three copies of each weight

    def wall_us(fn, args, reps=5):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return (time.perf_counter() - t) * 1e6

    monkeypatch.setattr(autotune, "_kernel_us", wall_us)
    res = autotune.sweep_decode("tiny", 1, fmt, max_configs=2, log=lambda s: None)
    assert set(res) == {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}
    for name, r in res.items():
        us = [b["us"] for b in r["best"]]
        assert us == sorted(us) and r["heuristic_us"] is not None and r["copies"] == 3
        bits = {} if fmt == "bf16" else {"bits": int(fmt[3:])}
        assert r["key"] == tuning.shape_key(m=1, n=r["n"], k=r["k"], dtype=jnp.bfloat16, **bits)
    assert res["mlp.c_proj"]["x"] == "array"  # width 256 < 1024 at one row: the unfused decode step


def test_merge_into_table_keeps_other_entries(tmp_path):
    path = tmp_path / "t" / "h100.json"
    tuning.merge_into_table(path, {"MatmulConfig": {"a": {"block_n": 64}}, "LayerNormConfig": {"b": {"block_rows": 1}}})
    tuning.merge_into_table(path, {"MatmulConfig": {"a": {"block_n": 128}, "c": {"block_n": 32}}})
    import json
    assert json.loads(path.read_text()) == {"MatmulConfig": {"a": {"block_n": 128}, "c": {"block_n": 32}},
                                            "LayerNormConfig": {"b": {"block_rows": 1}}}


def test_sweep_winners_drop_the_timings():
    res = {"c_fc": {"class": "MatmulConfig", "key": "k1", "best": [{"us": 8.9, "gbs": 2294, "block_n": 128}]},
           "none": {"class": "MatmulConfig", "key": "k2", "best": []}}
    assert autotune.sweep_winners(res) == {"MatmulConfig": {"k1": {"block_n": 128}}}
