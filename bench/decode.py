"""Decode speed: ms per generated token through ``jaxgpt.generate``'s compiled loop, against HF transformers.

    python -m bench.decode --model gpt2,gpt2-xl --backend xla,pallas --batch 1,8 [--tokens 256] [--hf] [--out F]

Method: random weights, a 16-token random prompt, greedy, EOS ignored; the decode of ``tokens - 1`` steps, driven
from the host as ``generate`` drives it (calls of compiled ``lax.while_loop`` steps, the next call queued before the
host reads the last, the KV cache donated), is timed by wall clock after a warm-up run, median of ``--reps``;
ms/token = decode time / steps (the prefill is timed apart). That is the number a user waits for, launch gaps
included. ``ms_per_token_one_call`` times the same steps as one call (no host in the loop) and
``host_calls_cost`` is the ratio less one: what returning to the host costs a token. Beside it, CUPTI device time of one
jitted decode step with its per-kernel breakdown shows how much of the step is kernel time, and the kernels of one
whole run of the loop (``loop_kernel_ms_per_token``, by kind) show how long the GPU sat idle (wall minus that).
``--kernels`` forces the Pallas backend's kernel choice (``jaxgpt.kernels``). Achieved bandwidth counts
the bytes a step must read (every weight once, the LM head included, plus the K/V cache up to the mean length) over
the measured copy bandwidth of the same GPU in the same process.
HF transformers (``--hf``): ``GPT2LMHeadModel`` from the same config, random weights, ``generate`` greedy with
``min_new_tokens = max_new_tokens``, eager, and ``torch.compile`` with a static cache where it compiles; timed by
wall clock with ``torch.cuda.synchronize``, (total - prefill-only run) / steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.timing import device_time_ms, group_kernels, kernel_breakdown, kernels_of, random_weights
from jaxgpt import GPTConfig
from jaxgpt.buckets import bucket_length
from jaxgpt.checkpoint import Scheme
from jaxgpt.engine import Engine
from jaxgpt.generate import _compiled, _Decoder
from jaxgpt.model import KVCache

PROMPT = 16


def copy_bandwidth_gbs() -> float:
    x = jnp.ones((65536, 4096), jnp.bfloat16)
    t = device_time_ms(jax.jit(lambda a: a * 2), x)
    return 2 * x.size * 2 / (t["median_ms"] * 1e-3) / 1e9


def step_bytes(cfg: GPTConfig, batch: int, mean_len: float, itemsize: int, weight_bytes: float | None = None) -> float:
    """Bytes one decode step must read: every weight once (``weight_bytes``, default the float model at
    ``itemsize``; wpe's unused rows excluded) plus the K/V cache up to ``mean_len``."""
    kv = 2 * cfg.n_layer * batch * mean_len * cfg.n_embd * itemsize
    if weight_bytes is None:
        weight_bytes = (cfg.num_params - cfg.n_ctx * cfg.n_embd) * itemsize
    return weight_bytes + kv


def _impl(backend: str, quantize: str | None) -> str:
    return f"jaxgpt-{backend}" + (f"-{quantize}" if quantize else "")


def jax_case(model: str, backend: str, dtype: str, batch: int, tokens: int, reps: int, breakdown: int,
             quantize: str | None = None, kernels: str | None = None) -> dict:
    cfg, sd = random_weights(model)
    engine = Engine(cfg, sd, dtype=dtype, backend=backend, quantize=quantize,
                    kernels=kernels if backend == "pallas" else None)
    itemsize = jnp.dtype(engine.dtype).itemsize
    weights = sum(x.nbytes for x in jax.tree.leaves(engine.state)) - cfg.n_ctx * cfg.n_embd * itemsize  # wpe: a row
    if quantize and Scheme.parse(quantize).head:  # the head reads its int8 copy: wte serves one embedding row
        weights -= cfg.vocab_size * cfg.n_embd * itemsize
    P = bucket_length(PROMPT, cfg.n_ctx)
    S = bucket_length(PROMPT + tokens, cfg.n_ctx)
    t0 = time.perf_counter()
    pre, dec = _compiled(engine, batch, P, S, True)
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    put = lambda a: jax.device_put(a, engine.device)  # noqa: E731
    ids = np.zeros((batch, P), np.int32)
    ids[:, :PROMPT] = rng.integers(0, cfg.vocab_size, (batch, PROMPT))
    lengths = put(np.full((batch,), PROMPT, np.int32))
    ids, done, key = put(ids), put(np.zeros((batch,), bool)), put(jax.random.key(0))
    rows = put(np.arange(batch, dtype=np.int32))
    params = [put(np.float32(0.0)), put(np.int32(0)), put(np.float32(1.0))]
    eos, one, none = put(np.int32(-1)), put(np.ones((1,), np.int32)), put(np.zeros((batch,), bool))

    def prefill():
        tok, out, d, cache = pre(engine.state, ids, lengths, rows, done, key, eos, *params)
        jax.block_until_ready(out)
        return cache, one, tok, out, d

    def one_call(carry):  # every step in one call: the loop without the host
        cache, i, tok, out, d = carry
        return dec(engine.state, cache, i, tok, out, d, none, lengths, rows, put(np.int32(tokens)), key, eos,
                   *params)

    def host_driven(carry):  # as generate runs it: calls of up to CALL_STEPS steps, the next one always queued
        decoder = _Decoder(engine, dec, carry, (lengths, rows, key, eos, *params), tokens, np.asarray(carry[3]))
        decoder.run(lambda i0, i1, out: None)
        return decoder

    pre_ms, dec_ms, one_ms = [], [], []
    for r in range(reps + 1):
        t0 = time.perf_counter()
        carry = prefill()
        t1 = time.perf_counter()
        decoder = host_driven(carry)
        t2 = time.perf_counter()
        _, steps, _, out, _ = jax.block_until_ready(one_call(prefill()))
        t3 = time.perf_counter()
        one_call_s = t3 - t2 - (t1 - t0)  # (minus a prefill)
        if r:  # the first run warms up
            pre_ms.append((t1 - t0) * 1e3)
            dec_ms.append((t2 - t1) * 1e3)
            one_ms.append(one_call_s * 1e3)
    loop_groups = None
    if jax.default_backend() == "gpu":  # the loop's own kernels (CUPTI, one run): wall clock minus this = idle GPU
        carry = prefill()
        (_, _, _, out, _), per_kernel = kernels_of(lambda: one_call(carry))
        loop_groups = group_kernels(per_kernel)
    assert decoder.steps == tokens and np.array_equal(decoder.out, np.asarray(out)), "host-driven != one call"
    out = np.asarray(out)
    finite = bool((out[:, :tokens] >= 0).all())
    steps = int(np.max(np.asarray(steps))) - 1
    ms_tok = statistics.median(dec_ms) / steps
    one_tok = statistics.median(one_ms) / steps
    row = {"impl": _impl(backend, quantize), "kernel_choice": str(engine.ops.kernels), "model": model, "dtype": dtype,
           "batch": batch, "tokens": tokens,
           "prefill_ms": statistics.median(pre_ms), "ms_per_token": ms_tok, "ms_per_token_min": min(dec_ms) / steps,
           "tokens_per_s": batch / ms_tok * 1e3,
           "ms_per_token_one_call": one_tok, "host_calls_cost": ms_tok / one_tok - 1,
           "compile_s": compile_s, "all_tokens_valid": finite,
           "bytes_per_step": step_bytes(cfg, batch, PROMPT + tokens / 2, jnp.dtype(engine.dtype).itemsize, weights)}
    if loop_groups is not None:
        row["loop_kernel_ms_per_token"] = sum(g[2] for g in loop_groups) / steps
        row["loop_groups"] = [(name, count / steps, ms / steps) for name, count, ms in loop_groups[:16]]
    # One decode step as its own jitted function (no donation): CUPTI kernel time and where it goes.
    def one_step(state, tok, pos, cache):
        m = nnx.merge(engine.graphdef, state)
        return m.decode(tok, pos, cache, engine.ops)

    step = jax.jit(one_step)
    cache = jax.tree.map(lambda a: put(np.asarray(rng.standard_normal(a.shape), np.float32).astype(a.dtype)),
                         jax.eval_shape(lambda: KVCache.zeros(cfg, batch, S, engine.dtype)))
    sargs = (engine.state, put(np.ones((batch,), np.int32)), put(np.full((batch,), S // 2, np.int32)), cache)
    t = device_time_ms(step, *sargs, iterations=20)
    row["step_kernel_ms"] = t["median_ms"]
    if breakdown and jax.default_backend() == "gpu":
        ks = kernel_breakdown(step, *sargs)
        row["kernel_count"] = len(ks)
        row["kernels"] = ks[:breakdown]
        row["kernel_groups"] = group_kernels(ks)
    return row


def hf_case(model: str, dtype: str, batch: int, tokens: int, reps: int, compiled: bool) -> dict:
    """HF transformers ``generate``, eager or compiled. Compiled: a static KV cache and ``torch.compile`` of the
    forward, first with CUDA graphs (``mode="reduce-overhead"``, a graph step marked before every forward so a step's
    outputs are not overwritten while ``generate`` reads them), and if that fails, Inductor without CUDA graphs
    (``mode="default"``); the row says which mode ran and why the other did not."""
    import torch
    import transformers
    cfg = GPTConfig.from_name(model)
    hcfg = transformers.GPT2Config(**cfg.to_hf_dict())
    tdtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a smoke check of the harness only
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    ids_gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, PROMPT), generator=ids_gen).to(dev)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=torch.ones_like(ids))
    failed = []
    for mode in ("reduce-overhead", "default") if compiled else (None,):
        torch.manual_seed(0)
        m = transformers.GPT2LMHeadModel(hcfg).to(dev, tdtype).eval()
        if mode is not None:
            m.generation_config.cache_implementation = "static"
            step = torch.compile(m.forward, mode=mode, fullgraph=True)

            def forward(*a, _step=step, _graphs=mode == "reduce-overhead", **k):
                if _graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                return _step(*a, **k)

            m.forward = forward

        def timed(n, m=m):
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                m.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            sync()
            return (time.perf_counter() - t0) * 1e3

        try:
            t0 = time.perf_counter()
            timed(tokens), timed(1)
            warm_s = time.perf_counter() - t0
            # the fastest of the reps, each length interleaved with the other: the difference of two wall clocks
            # is what is reported, and a load spike in either (a busy CPU) would otherwise swing it, even below zero
            full, one = map(min, zip(*((timed(tokens), timed(1)) for _ in range(reps))))
        except Exception as e:  # noqa: BLE001 - a compile mode that fails is reported; the next one is tried
            if mode is None or mode == "default":
                raise
            failed.append(f"{mode}: {type(e).__name__}: {str(e)[:160]}")
            continue
        ms_tok = (full - one) / (tokens - 1)
        if ms_tok <= 0:
            raise RuntimeError(f"HF {mode or 'eager'}: generate({tokens}) took {full:.2f} ms, no longer than "
                               f"generate(1) {one:.2f} ms: timing noise exceeds the decode; use more tokens or reps")
        row = {"impl": "hf-torch.compile" if compiled else "hf-eager", "model": model, "dtype": dtype,
               "batch": batch, "tokens": tokens, "prefill_ms": one, "ms_per_token": ms_tok,
               "tokens_per_s": batch / ms_tok * 1e3, "compile_s": warm_s, "torch": torch.__version__,
               "transformers": transformers.__version__,
               "bytes_per_step": step_bytes(cfg, batch, PROMPT + tokens / 2, torch.finfo(tdtype).bits // 8)}
        if mode is not None:
            row |= {"compile_mode": mode, "failed_modes": failed}
        return row
    raise RuntimeError("; ".join(failed))


def _save(path: str | None, rows: list[dict], bw: float | None) -> None:
    """The rows so far (written after every case, so a run cut short keeps what it measured)."""
    if path:
        with open(path, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "copy_gbs": bw,
                       "xla_flags": os.environ.get("XLA_FLAGS", ""),  # command buffers: on where it names them
                       "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2,gpt2-xl")
    ap.add_argument("--backend", default="xla,pallas")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hf", default="", help="comma list of eager,compile: HF transformers peers")
    ap.add_argument("--hf-tokens", type=int, default=64, help="tokens for the HF peers (eager is slow)")
    ap.add_argument("--breakdown", type=int, default=0)
    ap.add_argument("--quantize", default="none", help="comma list of none,int8,int4: weight formats to run")
    ap.add_argument("--command-buffers", choices=("on", "off"), default="on",
                    help="XLA command buffers (CUDA graphs) as the CLI sets them (jaxgpt.xla_flags); off: XLA's default")
    ap.add_argument("--kernels", default=None, metavar="OP=KERNEL,...",
                    help="the pallas backend's kernel choice (jaxgpt.kernels; default: the measured rules)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.command_buffers == "on":
        from jaxgpt.xla_flags import use_command_buffers
        use_command_buffers()  # (before the backend starts, below)
    on_gpu = jax.default_backend() == "gpu"
    bw = copy_bandwidth_gbs() if on_gpu else None
    rows = []
    for model in args.model.split(","):
        for batch in map(int, args.batch.split(",")):
            for backend, quant in itertools.product(args.backend.split(","), args.quantize.split(",")):
                quant = None if quant == "none" else quant
                try:
                    rows.append(jax_case(model, backend, args.dtype, batch, args.tokens, args.reps, args.breakdown,
                                         quant, args.kernels))
                except Exception as e:  # noqa: BLE001 - a failing case is reported, the others still run
                    rows.append({"impl": _impl(backend, quant), "model": model,
                                 "batch": batch, "error": repr(e)[:300]})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "kernels"}), flush=True)
                _save(args.out, rows, bw)
            for kind in filter(None, args.hf.split(",")):
                try:
                    rows.append(hf_case(model, args.dtype, batch, args.hf_tokens, args.reps, kind == "compile"))
                except Exception as e:  # noqa: BLE001
                    rows.append({"impl": f"hf-{kind}", "model": model, "batch": batch, "error": repr(e)[:300]})
                print(json.dumps(rows[-1]), flush=True)
                _save(args.out, rows, bw)
    for r in rows:
        if bw and "ms_per_token" in r:
            r["bandwidth_gbs"] = r["bytes_per_step"] / (r["ms_per_token"] * 1e-3) / 1e9
            r["pct_copy_bw"] = 100 * r["bandwidth_gbs"] / bw
            r["weight_limit_ms"] = r["bytes_per_step"] / (bw * 1e9) * 1e3
    dev = jax.devices()[0].device_kind
    print(f"\ndecode, {args.dtype}, greedy, {args.tokens} tokens after a {PROMPT}-token prompt, on {dev}"
          + (f"; copy bandwidth {bw:.0f} GB/s" if bw else ""))
    print(f"{'model':<8} {'B':>2} {'impl':<18} {'ms/token':>9} {'1 call':>7} {'tok/s':>8} {'%copyBW':>7} {'limit ms':>8} "
          f"{'step kern ms':>12} {'#kern':>5} {'prefill ms':>10} {'compile s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<8} {r['batch']:>2} {r['impl']:<18} ERROR {r['error'][:100]}")
            continue
        print(f"{r['model']:<8} {r['batch']:>2} {r['impl']:<18} {r['ms_per_token']:9.3f} "
              f"{r.get('ms_per_token_one_call', float('nan')):7.3f} {r['tokens_per_s']:8.0f} "
              f"{r.get('pct_copy_bw', float('nan')):7.1f} {r.get('weight_limit_ms', float('nan')):8.3f} "
              f"{r.get('step_kernel_ms', float('nan')):12.3f} {r.get('kernel_count', '-'):>5} {r['prefill_ms']:10.2f} "
              f"{r['compile_s']:9.1f}")
    print("jaxgpt: wall clock of the decode as generate drives it / steps (median of reps); 1 call: the same steps as "
          "one compiled call, no host in the loop; step kern = CUPTI device time "
          "of one jitted decode step (#kern: its kernels, counted with --breakdown N); HF: wall clock with cuda "
          "synchronize, (generate(N) - generate(1)) / (N-1), the fastest of the reps.")
    for r in rows:
        if r.get("loop_groups"):
            print(f"\n{r['model']} B{r['batch']} {r['impl']}: the decode loop's kernels (CUPTI, one run) "
                  f"{r['loop_kernel_ms_per_token']:.3f} ms a token against {r['ms_per_token']:.3f} wall; per token:")
            for name, count, ms in r["loop_groups"]:
                print(f"  {count:7.2f} x {ms * 1e3:9.1f} us  {name[:90]}")
    if args.breakdown:
        for r in rows:
            if r.get("kernels"):
                print(f"\n{r['model']} B{r['batch']} {r['impl']}: top kernels of one step (us)")
                for name, ms in r["kernels"]:
                    print(f"  {ms * 1e3:8.1f}  {name[:100]}")
                print("  by kind: count, total us")
                for name, count, ms in r.get("kernel_groups", []):
                    print(f"  {count:5d} {ms * 1e3:9.1f}  {name[:90]}")
    _save(args.out, rows, bw)


if __name__ == "__main__":
    main()
