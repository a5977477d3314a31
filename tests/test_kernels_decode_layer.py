"""The one-kernel decode block (``pallas_kernels.decode_layer``) against its float32 reference, and in the model.

On a CPU the interpreter runs the five-call form (its programs run one at a time, so the barriers of the one-kernel
form would wait forever); the GPU runs both forms compiled. Both forms share every phase's code.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.decode_layer import (BARRIERS, DecodeLayerPlan, LayerWeights, counter_slots, decode_layer,
                                         decode_layer_reference)
from pallas_kernels.partials import SplitK, resolve
from tests.kernel_base import DTYPES, ON_GPU, check, rand

FORMS = [False, True] if ON_GPU else [False]


def _inputs(rng, B, C, H, S, dtype, parts=3):
    n = lambda *shape, s=0.05: rand(rng, shape, dtype, s)  # noqa: E731
    w = LayerWeights(1 + n(C, s=0.1), n(C), n(C, 3 * C), n(3 * C), n(C, C), n(C), 1 + n(C, s=0.1), n(C),
                     n(C, 4 * C), n(4 * C), n(4 * C, C), n(C))
    mlp_in = SplitK(rand(rng, (parts, B, C), "float32", 0.5), n(C), "none", jnp.dtype(dtype))
    kc, vc = n(B, S, H, C // H, s=1.0), n(B, S, H, C // H, s=1.0)
    pos = jnp.asarray(rng.integers(0, S, (B,)), jnp.int32).at[0].set(0)  # row 0: the very first token
    return n(B, C, s=1.0), mlp_in, w, kc, vc, pos


def _run(args, H, plan, fused, layer=0, n_layer=1):
    counters = jnp.zeros((n_layer * counter_slots(args[0].shape[0], H),), jnp.int32)
    return decode_layer(*args[:5], args[5], counters, jnp.array([layer]), eps=1e-5, n_head=H, plan=plan,
                        fused=fused)


SHAPES = [
    (1, 128, 2, 40, 5),  # one row, cache shorter than a block
    (3, 80, 5, 130, 7),  # C not a power of two, head_dim 16, several cache splits
    (16, 64, 4, 64, 3),  # the most rows, few programs: many items each
]
FLAGS = {"plan": {}, "no-prefetch": {"prefetch_rows": 0}, "prefetch-16": {"prefetch_rows": 16},
         "one-split": {"att_splits": 1}}


def _layer_cases():
    """Every shape with the heuristic plan in float32, and in bfloat16 on one shape, by default; every flag and
    dtype with --full."""
    for shape in SHAPES:
        for name, flags in FLAGS.items():
            for dtype in DTYPES:
                quick = name == "plan" and (dtype == "float32" or shape == SHAPES[1])
                yield pytest.param(*shape, flags, dtype, id=f"{'-'.join(map(str, shape))}-{name}-{dtype}",
                                   marks=() if quick else pytest.mark.slow)


@pytest.mark.parametrize("fused", FORMS)
@pytest.mark.parametrize("B,C,H,S,programs,flags,dtype", list(_layer_cases()))
def test_decode_layer_matches_reference(B, C, H, S, programs, flags, dtype, fused):
    if flags and not ON_GPU and dtype != "float32":
        pytest.skip("the plan flags change no arithmetic: one dtype suffices in the interpreter")
    rng = np.random.default_rng(B * 1000 + C)
    args = _inputs(rng, B, C, H, S, dtype)
    plan = dataclasses.replace(DecodeLayerPlan.heuristic(B, C, H, S, programs, jnp.dtype(dtype).itemsize), **flags)
    h1, mlp_out, kc, vc, counters = _run(args, H, plan, fused)
    rh1, rout, rk, rv = decode_layer_reference(*args, eps=1e-5, n_head=H)
    check(h1, rh1, dtype, C, "h1")
    check(h1.astype(jnp.float32) + resolve(mlp_out).astype(jnp.float32), rout, dtype, 4 * C, "block output")
    check(kc, rk, dtype, C, "k cache")
    check(vc, rv, dtype, C, "v cache")
    counts, merges = np.split(np.asarray(counters), [BARRIERS])
    assert counts.tolist() == [programs if fused else 0] * BARRIERS  # every program passed every barrier once
    # every (row, head) counted each of its splits once
    assert merges.tolist() == [plan.att_splits if plan.att_splits > 1 else 0] * (B * H)


@pytest.mark.parametrize("plan", [
    DecodeLayerPlan(4, (64, 64, 2), (64, 3), (128, 64, 2), (64, 128, 3), att_splits=3),  # a head's splits merged
    pytest.param(DecodeLayerPlan(9, (128, 32, 1), (128, 1), (64, 32, 4), (128, 64, 1), att_splits=1, att_block=32),
                 marks=pytest.mark.slow),
    pytest.param(DecodeLayerPlan(11, (64, 64, 2), (64, 2), (128, 64, 2), (64, 64, 3), att_splits=2),
                 marks=pytest.mark.slow)], ids=["splits-3", "block-32", "splits-2"])
def test_plans_are_free_choices(plan):
    """Other splits and cache slicing give the same block (only the order of float32 sums changes)."""
    rng = np.random.default_rng(5)
    B, C, H, S = 2, 128, 4, 150
    args = _inputs(rng, B, C, H, S, "float32")
    want = decode_layer_reference(*args, eps=1e-5, n_head=H)
    h1, mlp_out, kc, _, _ = _run(args, H, plan, fused=False)
    check(h1, want[0], "float32", C, f"h1 {plan}")
    check(h1 + resolve(mlp_out), want[1], "float32", 4 * C, f"out {plan}")
    check(kc, want[2], "float32", C, "k cache")


@pytest.mark.parametrize("fused", FORMS)
@pytest.mark.parametrize("dtype,deep", [("float32", False), ("bfloat16", True),
                                        pytest.param("bfloat16", False, marks=pytest.mark.slow),
                                        pytest.param("float32", True, marks=pytest.mark.slow)])
def test_int8_weights_match_the_dequantized_reference(dtype, fused, deep):
    """int8 per-channel projections: tiles widened in registers, scales on the partials; the reference multiplies
    by the float values the int8 weights stand for. ``deep``: twice the K rows a tile (as many bytes as a float
    tile)."""
    from pallas_kernels.quant_format import quantize
    rng = np.random.default_rng(77)
    B, C, H, S = 2, 128, 4, 70
    r, mlp_in, w, kc, vc, pos = _inputs(rng, B, C, H, S, dtype)
    w = w._replace(**{f: quantize(np.asarray(getattr(w, f), np.float32), bits=8)
                      for f in ("c_attn_w", "c_proj_w", "c_fc_w", "mlp_proj_w")})
    plan = DecodeLayerPlan.heuristic(B, C, H, S, 5, jnp.dtype(dtype).itemsize)
    if deep:
        plan = dataclasses.replace(plan, qkv=(64, 128, 1), fc=(128, 128, 1), out=(64, 256, 2))
    h1, mlp_out, kc2, _, _ = _run((r, mlp_in, w, kc, vc, pos), H, plan, fused)
    rh1, rout, rk, _ = decode_layer_reference(r, mlp_in, w, kc, vc, pos, eps=1e-5, n_head=H)
    check(h1, rh1, dtype, C, "h1")
    check(h1.astype(jnp.float32) + resolve(mlp_out).astype(jnp.float32), rout, dtype, 4 * C, "block output")
    check(kc2, rk, dtype, C, "k cache")


def test_mixed_or_int4_weights_are_refused():
    from pallas_kernels.quant_format import quantize
    rng = np.random.default_rng(0)
    r, mlp_in, w, kc, vc, pos = _inputs(rng, 1, 128, 2, 16, "float32")
    for bad in (w._replace(c_fc_w=quantize(np.asarray(w.c_fc_w), bits=8)),
                w._replace(**{f: quantize(np.asarray(getattr(w, f)), bits=4, group=32)
                              for f in ("c_attn_w", "c_proj_w", "c_fc_w", "mlp_proj_w")})):
        with pytest.raises(ValueError, match="int8 per-channel"):
            decode_layer(r, mlp_in, bad, kc, vc, pos, jnp.zeros((counter_slots(1, 2),), jnp.int32), jnp.array([0]),
                         eps=1e-5, n_head=2, interpret=True)


def test_chained_blocks_finish_the_previous_partials():
    """Block 2 takes block 1's (h1, partials): the chain equals the reference applied twice."""
    rng = np.random.default_rng(9)
    B, C, H, S = 2, 64, 2, 32
    r, mlp_in, w, kc, vc, pos = _inputs(rng, B, C, H, S, "float32")
    plan = DecodeLayerPlan.heuristic(B, C, H, S, 4)
    h1, parts, kc1, vc1, _ = _run((r, mlp_in, w, kc, vc, pos), H, plan, False)
    h2, parts2, *_ = _run((h1, parts, w, kc1, vc1, pos + 1), H, plan, False)
    rh1, rout, rk, rv = decode_layer_reference(r, mlp_in, w, kc, vc, pos, eps=1e-5, n_head=H)
    zero = SplitK(jnp.zeros((1, B, C), jnp.float32), jnp.zeros((C,)), "none", jnp.dtype("float32"))
    _, rout2, _, _ = decode_layer_reference(rout, zero, w, rk, rv, pos + 1, eps=1e-5, n_head=H)
    check(h2 + resolve(parts2), rout2, "float32", 4 * C, "two blocks")


@pytest.mark.parametrize("bad,needle", [
    (dict(n_head=3), "head_dim"),
    (dict(rows=17), "at most 16 rows"),
    (dict(fused=True, interpret=True), "fused=True needs"),
])
def test_bad_calls_are_clear_errors(bad, needle):
    rng = np.random.default_rng(0)
    B = bad.pop("rows", 1)
    r, mlp_in, w, kc, vc, pos = _inputs(rng, B, 64, 2, 16, "float32")
    kw = dict(eps=1e-5, n_head=2, interpret=True) | bad
    cnt = jnp.zeros((counter_slots(B, 2),), jnp.int32)
    with pytest.raises(ValueError, match=needle):
        decode_layer(r, mlp_in, w, kc, vc, pos, cnt, jnp.array([0]), **kw)


def test_counters_of_the_wrong_size_are_refused():
    r, mlp_in, w, kc, vc, pos = _inputs(np.random.default_rng(0), 1, 64, 2, 16, "float32")
    with pytest.raises(ValueError, match="counter_slots"):
        decode_layer(r, mlp_in, w, kc, vc, pos, jnp.zeros((4,), jnp.int32), jnp.array([0]), eps=1e-5, n_head=2,
                     interpret=True)


def test_one_kernel_form_refuses_more_programs_than_sms(monkeypatch):
    """More programs than can be resident would deadlock at the first barrier: refused before anything runs."""
    from pallas_kernels import decode_layer as dl
    rng = np.random.default_rng(0)
    r, mlp_in, w, kc, vc, pos = _inputs(rng, 1, 64, 2, 16, "float32")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # a GPU with 4 SMs
    monkeypatch.setattr(dl, "default_programs", lambda: 4)
    plan = dataclasses.replace(DecodeLayerPlan.heuristic(1, 64, 2, 16, 4), programs=5)
    with pytest.raises(ValueError, match="resident"):
        decode_layer(r, mlp_in, w, kc, vc, pos, jnp.zeros((counter_slots(1, 2),), jnp.int32), jnp.array([0]),
                     eps=1e-5, n_head=2, plan=plan, fused=True, interpret=False)


def test_bad_plans_are_clear_errors():
    with pytest.raises(ValueError, match="power of two"):
        DecodeLayerPlan(4, (48, 64, 1), (64, 1), (64, 64, 1), (64, 64, 1), att_splits=1)
    with pytest.raises(ValueError, match="split"):
        DecodeLayerPlan(4, (64, 64, 0), (64, 1), (64, 64, 1), (64, 64, 1), att_splits=1)
    with pytest.raises(ValueError, match="prefetch_rows"):
        DecodeLayerPlan(4, (64, 64, 1), (64, 1), (64, 64, 1), (64, 64, 1), att_splits=1, prefetch_rows=48)


@pytest.mark.parametrize("dtype,fused_head", [("bfloat16", True), pytest.param("float32", True, marks=pytest.mark.slow),
                                              pytest.param("bfloat16", False, marks=pytest.mark.slow)])
def test_model_decode_with_block_kernels_matches_xla(dtype, fused_head, monkeypatch):
    """Greedy generation with every block's decode step in one kernel, then ln_f and the LM head in one
    (``lm_head_decode``; or the two-kernel path), equals the XLA backend's tokens."""
    from jaxgpt import GPTConfig, ops_pallas, random_state_dict
    from jaxgpt.engine import Engine
    from jaxgpt.generate import generate
    kernels = {"decode": "block", "head": "fused" if fused_head else "xla"}
    calls = []
    real = ops_pallas.lm_head_decode
    monkeypatch.setattr(ops_pallas, "lm_head_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_ctx=64, vocab_size=211)
    sd = random_state_dict(cfg, seed=3)
    prompts = [[5, 9, 11], [7, 1, 2, 3, 4, 8, 30]]
    got = generate(Engine(cfg, sd, dtype=dtype, backend="pallas", kernels=kernels), prompts, max_new_tokens=12,
                   stop_at_eos=False)
    want = generate(Engine(cfg, sd, dtype=dtype, backend="xla"), prompts, max_new_tokens=12, stop_at_eos=False)
    assert bool(calls) == fused_head
    assert [r.ids for r in got] == [r.ids for r in want]


@pytest.mark.slow  # (int8 blocks: test_int8_weights_match_the_dequantized_reference; the int8 head: test_kernels_lm_head)
@pytest.mark.parametrize("scheme", ["int8+head", "int8"])
def test_int8_model_decode_on_block_kernels_matches_xla(monkeypatch, scheme):
    """An int8 model on the block kernel (the default): greedy tokens equal the XLA backend's int8 model's. With the
    int8 head, the fused ln_f + head kernel reads that (V, C) copy."""
    from jaxgpt import GPTConfig, ops_pallas, random_state_dict
    from jaxgpt.engine import Engine
    from jaxgpt.generate import generate
    from pallas_kernels.quant_format import QHead
    calls, heads = [], []
    real, real_head = ops_pallas.decode_layer, ops_pallas.lm_head_decode
    monkeypatch.setattr(ops_pallas, "decode_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(ops_pallas, "lm_head_decode", lambda *a, **k: heads.append(a[4]) or real_head(*a, **k))
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, n_ctx=64, vocab_size=150)
    sd = random_state_dict(cfg, seed=4)
    prompts = [[3, 1, 4, 1, 5]]
    got = generate(Engine(cfg, sd, backend="pallas", quantize=scheme, kernels="decode=block"), prompts,
                   max_new_tokens=10, stop_at_eos=False)
    want = generate(Engine(cfg, sd, backend="xla", quantize=scheme), prompts, max_new_tokens=10, stop_at_eos=False)
    assert calls, "the int8 model did not take the block kernel"
    assert heads and all(isinstance(h, QHead) == scheme.endswith("+head") for h in heads)
    assert [r.ids for r in got] == [r.ids for r in want]


def test_block_kernels_step_aside_where_they_cannot_run():
    """Forced ``decode=block``: int4 weights and a head_dim that is not a power of two take the per-op path; a
    prefill never takes it."""
    from jaxgpt.backends import get_ops
    from jaxgpt.ops import BlockParams
    from pallas_kernels.quant_format import quantize
    ops = get_ops("pallas", "decode=block")
    C = 64
    p = BlockParams(*([jnp.ones((C,))] * 12))
    assert ops.block_decode(jnp.ones((1, 1, C)), [p], n_head=2)
    assert not ops.block_decode(jnp.ones((1, 4, C)), [p], n_head=2)
    q8, q4 = quantize(np.ones((C, C), np.float32), bits=8), quantize(np.ones((C, C), np.float32), bits=4, group=32)
    assert ops.block_decode(jnp.ones((1, 1, C)), [BlockParams(*([jnp.ones((C,))] * 2), q8, jnp.ones((C,)), q8,
                                                              *([jnp.ones((C,))] * 3), q8, jnp.ones((C,)), q8,
                                                              jnp.ones((C,)))], n_head=2)
    for mixed in ((q8, q8, q8, jnp.ones((C, C))), (q4, q4, q4, q4)):
        w = iter(mixed)
        p = BlockParams(*([jnp.ones((C,))] * 2), next(w), jnp.ones((C,)), next(w), *([jnp.ones((C,))] * 3), next(w),
                        jnp.ones((C,)), next(w), jnp.ones((C,)))
        assert not ops.block_decode(jnp.ones((1, 1, C)), [p], n_head=2)
    p48 = BlockParams(*([jnp.ones((96,))] * 12))  # head_dim 48: not a power of two, the per-op path serves it
    assert not ops.block_decode(jnp.ones((1, 1, 96)), [p48], n_head=2)
    p = BlockParams(*([jnp.ones((C,))] * 12))
    assert not get_ops("pallas", "decode=fused").block_decode(jnp.ones((1, 1, C)), [p], n_head=2)


@pytest.mark.parametrize("int8,knobs", [(False, {}), (True, {}), (False, {"prefetch_rows": 0})],
                         ids=["bf16", "int8", "bf16-no-prefetch"])
def test_one_kernel_form_lowers_to_triton_for_cuda(int8, knobs):
    """The barrier (atomics, a spin loop) and every phase lower through Triton at gpt2-xl's decode shapes."""
    import re

    from pallas_kernels.quant_format import QWeight
    S = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)  # noqa: E731
    C, H = 1600, 25

    def mat(k, n):
        return QWeight(S(k, n, dt=jnp.int8), S(1, n, dt=jnp.float32), 8, None, k) if int8 else S(k, n)

    w = LayerWeights(S(C), S(C), mat(C, 3 * C), S(3 * C), mat(C, C), S(C), S(C), S(C), mat(C, 4 * C), S(4 * C),
                     mat(4 * C, C), S(C))
    plan = dataclasses.replace(DecodeLayerPlan.heuristic(1, C, H, 512, 132), **knobs)

    def f(r, p, pb, w, kc, vc, pos, cnt, layer):
        return decode_layer(r, SplitK(p, pb, "none", jnp.dtype(jnp.bfloat16)), w, kc, vc, pos, cnt, layer,
                            eps=1e-5, n_head=H, plan=plan, fused=True, interpret=False)

    text = jax.jit(f).trace(S(1, C), S(3, 1, C, dt=jnp.float32), S(C), w, S(1, 512, H, 64), S(1, 512, H, 64),
                            S(1, dt=jnp.int32), S(48 * counter_slots(1, H), dt=jnp.int32),
                            S(1, dt=jnp.int32)).lower(lowering_platforms=("cuda",)).as_text()
    calls = re.findall(r"custom_call @([\w$.]+)", text)
    assert calls == ["__gpu$xla.gpu.triton"], calls


@pytest.mark.slow  # (the model's decode tests run first blocks too)
@pytest.mark.parametrize("fused", FORMS)
def test_first_block_takes_no_partials(fused):
    """``mlp_in=None`` (the first block of a step): the block's input is r alone, as with zero partials."""
    rng = np.random.default_rng(11)
    B, C, H, S = 2, 128, 4, 40
    r, _, w, kc, vc, pos = _inputs(rng, B, C, H, S, "float32")
    plan = DecodeLayerPlan.heuristic(B, C, H, S, 4, 4)
    zeros = SplitK(jnp.zeros((1, B, C)), jnp.zeros((C,)), "none", jnp.dtype(jnp.float32))
    got = _run((r, None, w, kc, vc, pos), H, plan, fused)
    want = decode_layer_reference(r, None, w, kc, vc, pos, eps=1e-5, n_head=H)
    same = _run((r, zeros, w, kc, vc, pos), H, plan, fused)
    check(got[0], want[0], "float32", C, "h1")
    check(got[0].astype(jnp.float32) + resolve(got[1]), want[1], "float32", 4 * C, "block output")
    for a, b in zip(got[:4], same[:4]):
        np.testing.assert_array_equal(np.asarray(resolve(a)), np.asarray(resolve(b)))
