"""Multi-device inference on 8 CPU devices (conftest sets --xla_force_host_platform_device_count=8): data parallel,
tensor parallel, 2-D meshes, pmap and two processes equal one device, row for row."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxgpt import GPTConfig, random_state_dict
from jaxgpt.engine import Engine
from jaxgpt.errors import UsageError
from jaxgpt.generate import generate
from jaxgpt.sharding import param_spec, pmap_last_logits, shard
from tests.conftest import ON_GPU

CFG = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_ctx=64, vocab_size=300)
ROWS = [np.random.default_rng(0).integers(0, CFG.vocab_size, size=n).tolist()
        for n in (1, 3, 5, 7, 9, 11, 13, 2, 4, 6, 8)]  # 11 prompts of different lengths

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8 and not ON_GPU, reason="needs 8 devices")
EIGHT = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (on a GPU machine: 8 GPUs)")


@pytest.fixture(scope="module")
def single():
    """One device's answers: last-position logits and 12 greedy tokens per prompt."""
    sd = random_state_dict(CFG, seed=4)
    engine = Engine(CFG, sd)
    return sd, engine.last_logits(ROWS), [g.ids for g in generate(engine, ROWS, max_new_tokens=12,
                                                                    stop_at_eos=False)]


def _devices(n):
    return jax.devices()[:n] if len(jax.devices()) >= n else pytest.skip(f"needs {n} devices")


@pytest.mark.parametrize("data,tensor,backend", [
    (True, 1, "xla"), (2, 4, "xla"), (3, 1, "xla"),
    *(pytest.param(*case, marks=pytest.mark.slow)  # (the Pallas path: also in the quantized data-parallel test)
      for case in [(True, 1, "pallas"), (1, 2, "xla"), (1, 4, "xla"), (4, 2, "xla")])])
def test_sharded_equals_one_device(single, data, tensor, backend):
    sd, want_logits, want_ids = single
    n = (8 if data is True else data * tensor) if not ON_GPU else len(jax.devices())
    if ON_GPU and (data is not True and data * tensor > n):
        pytest.skip("not enough GPUs")
    engine = shard(Engine(CFG, sd, backend=backend), data=data, tensor=tensor, devices=_devices(min(n, 8)))
    got = engine.last_logits(ROWS)
    assert got.shape == want_logits.shape and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want_logits, atol=2e-5, rtol=0)
    out = generate(engine, ROWS, max_new_tokens=12, stop_at_eos=False)
    assert [g.ids for g in out] == want_ids


@EIGHT
def test_batch_smaller_than_the_device_count(single):
    sd, want_logits, want_ids = single
    engine = shard(Engine(CFG, sd), data=True)  # 8 devices, 3 prompts: padded to 8 and dropped
    np.testing.assert_allclose(engine.last_logits(ROWS[:3]), want_logits[:3], atol=2e-5, rtol=0)
    assert [g.ids for g in generate(engine, ROWS[:3], max_new_tokens=12, stop_at_eos=False)] == want_ids[:3]


@pytest.mark.slow  # (the split: test_sharded_equals_one_device; per-row sampling keys: test_generate)
@EIGHT
def test_sampling_does_not_depend_on_the_split(single):
    sd = single[0]
    kw = dict(max_new_tokens=10, temperature=1.0, top_k=50, seed=3, stop_at_eos=False)
    one = [g.ids for g in generate(Engine(CFG, sd), ROWS, **kw)]
    assert [g.ids for g in generate(shard(Engine(CFG, sd), data=True), ROWS, **kw)] == one


@pytest.mark.slow  # (quantized weights: test_quantize; the split: test_sharded_equals_one_device)
@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_quantized_weights_run_data_parallel(single, backend):
    """An int8 model split over the data axis gives one device's quantized answers, row for row."""
    sd = single[0]
    kw = dict(max_new_tokens=6, stop_at_eos=False)
    one = Engine(CFG, sd, quantize="int8", backend=backend)
    many = shard(Engine(CFG, sd, quantize="int8", backend=backend), data=True, devices=_devices(4))
    np.testing.assert_allclose(many.last_logits(ROWS), one.last_logits(ROWS), atol=2e-5, rtol=0)
    assert [g.ids for g in generate(many, ROWS, **kw)] == [g.ids for g in generate(one, ROWS, **kw)]


def test_pmap_equals_one_device(single):
    sd, want_logits, _ = single
    np.testing.assert_allclose(pmap_last_logits(Engine(CFG, sd), ROWS), want_logits, atol=2e-5, rtol=0)


@EIGHT
def test_weights_are_split_megatron_style():
    engine = shard(Engine(CFG, random_state_dict(CFG, seed=1)), data=2, tensor=4)
    w = engine.state["h"][0]["attn"]["c_attn"]["weight"][...]
    assert w.sharding.spec == param_spec("h.0.attn.c_attn.weight", 4) and len(w.addressable_shards) == 8
    assert w.addressable_shards[0].data.shape == (64, 3 * 64 // 4)
    assert param_spec("h.0.mlp.c_proj.weight", 4) == jax.sharding.PartitionSpec("tensor", None)
    assert param_spec("wte.weight", 4) == jax.sharding.PartitionSpec()


@pytest.mark.parametrize("kw,needle", [
    ({"tensor": 3}, "does not divide n_head=4"),
    ({"tensor": 8, "data": 1}, "does not divide n_head=4"),
    ({"tensor": 2, "backend": "pallas"}, "xla backend"),
    ({"data": 99}, "needs 99"),
])
def test_bad_meshes_are_clear_errors(kw, needle):
    backend = kw.pop("backend", "xla")
    with pytest.raises(UsageError, match=needle):
        shard(Engine(CFG, random_state_dict(CFG, seed=1), backend=backend), **kw)


@pytest.mark.slow  # (the splits: test_sharded_equals_one_device; bad meshes: test_bad_meshes_are_clear_errors)
@EIGHT
def test_cli_data_and_tensor_parallel_match(capsys, tiny_checkpoint):
    from jaxgpt.cli import main
    prompts = ["Dobby is", "The cat sat on the mat", "Hello", "A", "Once upon a time there"]

    def ids(*extra):
        assert main(["generate", *prompts, "--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "6",
                     "--ignore-eos", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    base = ids()
    dp, tp = ids("--data-parallel"), ids("--tensor-parallel", "2", "--data-parallel")
    assert dp["ids"] == base["ids"] == tp["ids"]
    assert dp["mesh"] == {"data": 8, "tensor": 1} and tp["mesh"] == {"data": 4, "tensor": 2}
    assert main(["predict", "Dobby is", "--checkpoint", str(tiny_checkpoint), "--tensor-parallel", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n_head=2" in err


WORKER = r"""
import json, os, sys
import numpy as np
import jaxgpt
from jaxgpt import GPTConfig, random_state_dict
from jaxgpt.engine import Engine
jaxgpt.initialize_distributed()
import jax
cfg = GPTConfig(**json.loads(sys.argv[1]))
rows = json.loads(sys.argv[2])
engine = jaxgpt.shard(Engine(cfg, random_state_dict(cfg, seed=4)), data=True)
out = engine.last_logits(rows)
gen = jaxgpt.generate(engine, rows, max_new_tokens=12, stop_at_eos=False)
print(json.dumps({"process": jax.process_index(), "devices": len(jax.devices()), "logits": out.tolist(),
                  "ids": [g.ids for g in gen]}))
"""


@pytest.mark.slow
@pytest.mark.skipif(ON_GPU, reason="CPU processes")
def test_two_processes_share_one_mesh(single, tmp_path):
    """jax.distributed on one machine: two processes of 4 CPU devices each form one 8-device data-parallel mesh."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = json.dumps({"n_layer": CFG.n_layer, "n_head": CFG.n_head, "n_embd": CFG.n_embd, "n_ctx": CFG.n_ctx,
                      "vocab_size": CFG.vocab_size})
    procs, logs = [], []
    for pid in range(2):
        env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(pid), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        out, err = open(tmp_path / f"out{pid}", "w"), open(tmp_path / f"err{pid}", "w")  # files: a full pipe
        logs.append((out, err))                                                          # would deadlock both
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, cfg, json.dumps(ROWS)], env=env,
                                      stdout=out, stderr=err, text=True))
    try:
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            p.kill()
    for f in (f for pair in logs for f in pair):
        f.close()
    outs = [((tmp_path / f"out{i}").read_text(), (tmp_path / f"err{i}").read_text()) for i in range(2)]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["process"] for r in results) == [0, 1] and all(r["devices"] == 8 for r in results)
    for r in results:
        np.testing.assert_allclose(np.array(r["logits"], np.float32), single[1], atol=2e-5, rtol=0)
        assert r["ids"] == single[2]
