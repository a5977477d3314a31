"""The server under load: ``jaxgpt serve`` in a process of its own, an open-loop load generator against it.

    python -m bench.serve --model gpt2 --backend pallas --dtype bfloat16 --rates 4,16,64,inf --requests 200 \\
        [--max-batch 64] [--prompt 32,512] [--output 64,256] [--out results.json] [--plot serve.png]

Method: random weights; each request is a random token-id prompt (length uniform in ``--prompt``) asking for a
length uniform in ``--output`` with ``ignore_eos``, greedy, streamed. Arrivals are a Poisson process at each
``--rate`` (requests/s; ``inf``: all at once, the server saturated); the generator never waits for an answer before
sending the next (open loop). Per request: time to first token (arrival to the first streamed text) and inter-token
latency (the gaps between streamed pieces, each spread over the tokens it carried). Throughput: output tokens over
the time from the first arrival to the last answer. The ceiling beside it: our static-batch ``generate`` at the same
batch (``--max-batch`` prompts of the mean prompt length, the mean output length, one call), in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def _one(client, url: str, body: dict, t_arrive: float, rec: dict) -> None:
    import httpx
    t_first, stamps, tokens = None, [], 0
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                rec["status"] = resp.status_code
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                for c in obj.get("choices", []):
                    if c.get("text"):
                        now = time.perf_counter()
                        t_first = t_first or now
                        stamps.append(now)
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
        rec.update(status=200, ttft=t_first - t_arrive if t_first else None, end=time.perf_counter(),
                   tokens=tokens, stamps=stamps)
    except httpx.HTTPError as e:
        rec["status"] = f"{type(e).__name__}"


async def load(url: str, model: str, rate: float, n: int, prompt: tuple[int, int], output: tuple[int, int],
               vocab: int, seed: int = 0) -> dict:
    """Send ``n`` requests at Poisson ``rate`` (inf: at once); the latency and throughput of their answers."""
    import httpx
    rng = np.random.default_rng(seed)
    gaps = np.zeros(n) if rate == float("inf") else rng.exponential(1.0 / rate, n)
    recs = [{} for _ in range(n)]
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        tasks = []
        t0 = time.perf_counter()
        t = t0
        for k in range(n):
            t += gaps[k]
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
            body = {"model": model, "prompt": rng.integers(0, vocab, int(rng.integers(*prompt, endpoint=True))).tolist(),
                    "max_tokens": int(rng.integers(*output, endpoint=True)), "temperature": 0, "stream": True,
                    "ignore_eos": True}
            tasks.append(asyncio.create_task(_one(client, url, body, time.perf_counter(), recs[k])))
        await asyncio.gather(*tasks)
    ok = [r for r in recs if r.get("status") == 200 and r.get("ttft") is not None]
    itl = []
    for r in ok:
        s = r["stamps"]
        if len(s) > 1 and r["tokens"] > 1:
            per = (s[-1] - s[0]) / (r["tokens"] - 1)  # tokens after the first, spread over the stream
            itl.extend([per] * (r["tokens"] - 1))
    span = max(r["end"] for r in ok) - t0 if ok else float("nan")
    out_tokens = sum(r["tokens"] for r in ok)
    return {"rate": rate, "requests": n, "ok": len(ok), "failed": n - len(ok), "output_tokens": out_tokens,
            "seconds": span, "tokens_per_s": out_tokens / span if ok else 0.0,
            "ttft_p50_ms": 1e3 * _pct([r["ttft"] for r in ok], 50), "ttft_p99_ms": 1e3 * _pct([r["ttft"] for r in ok], 99),
            "itl_p50_ms": 1e3 * _pct(itl, 50), "itl_p99_ms": 1e3 * _pct(itl, 99)}


def static_peer(args, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Our static-batch ``generate`` at ``batch`` rows (the ceiling), in a process of its own: output tokens/s of
    the decode, and the prefill + first decode step of one prompt alone (the TTFT floor's yardstick)."""
    code = f"""
import json, time, numpy as np, jax, jaxgpt
e = jaxgpt.load_model({args.model!r}, dtype={args.dtype!r}, backend={args.backend!r}, allow_download=False)
rng = np.random.default_rng(0)
rows = [rng.integers(0, e.config.vocab_size, {prompt_len}).tolist() for _ in range({batch})]
for _ in range(2):
    r = jaxgpt.generate(e, rows, max_new_tokens={new_tokens}, stop_at_eos=False)
one = [jaxgpt.generate(e, rows[:1], max_new_tokens=2, stop_at_eos=False) for _ in range(3)][-1]
print("RESULT", json.dumps({{"batch": {batch}, "tokens_per_s": r.new_tokens / r.decode_s,
      "decode_ms_per_step": r.decode_ms_per_step, "alone_prefill_plus_step_ms": 1e3 * (one.prefill_s + one.decode_s)}}))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    m = re.search(r"^RESULT (.*)$", p.stdout, re.M)
    if not m:
        raise RuntimeError(f"static peer failed: {p.stderr[-2000:]}")
    return json.loads(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--backend", default="pallas")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--prefill-batch", type=int, default=4)
    ap.add_argument("--rates", default="4,16,64,inf", help="requests/s, comma list; inf: all at once")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-context", type=int, default=None, help="the server's --max-context (fewer prompt buckets)")
    ap.add_argument("--prompt", default="32,512", help="prompt length range (tokens)")
    ap.add_argument("--output", default="64,256", help="output length range (tokens)")
    ap.add_argument("--no-static", action="store_true", help="skip the static-batch ceiling")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    prompt = tuple(int(x) for x in args.prompt.split(","))
    output = tuple(int(x) for x in args.output.split(","))
    rates = [float(r) for r in args.rates.split(",")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jaxgpt", "serve", "--model", args.model, "--backend", args.backend, "--dtype",
           args.dtype, "--port", "0", "--max-batch", str(args.max_batch), "--chunk", str(args.chunk),
           "--prefill-batch", str(args.prefill_batch), "--served-model-name", args.model]
    if args.max_context:
        cmd += ["--max-context", str(args.max_context)]
    t0 = time.perf_counter()
    srv = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    url, log = None, []
    while url is None:
        line = srv.stderr.readline()
        if not line:
            raise SystemExit("the server did not start:\n" + "".join(log))
        log.append(line)
        m = re.search(r"on (http://[^ ]+)/v1", line)
        url = m.group(1) if m else None
    start_s = time.perf_counter() - t0
    print(f"server up in {start_s:.1f} s (weights, compiles): {url}", flush=True)
    from jaxgpt.config import GPTConfig
    vocab = GPTConfig.from_name(args.model).vocab_size
    rows = []
    try:
        asyncio.run(load(url, args.model, 50.0, min(16, args.requests), prompt, output, vocab, seed=99))  # warm-up
        for rate in rates:
            row = asyncio.run(load(url, args.model, rate, args.requests, prompt, output, vocab))
            row.update(model=args.model, backend=args.backend, dtype=args.dtype, max_batch=args.max_batch,
                       chunk=args.chunk, server_start_s=start_s)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        srv.terminate()
        srv.wait(timeout=120)
    static = None
    if not args.no_static:
        static = static_peer(args, args.max_batch, sum(prompt) // 2, sum(output) // 2)
        print("static", json.dumps(static), flush=True)
    import jax
    gpu = jax.devices()[0].device_kind if jax.default_backend() == "gpu" else "cpu"
    print(f"\nserve, {args.model} {args.dtype} {args.backend}, {args.max_batch} slots, chunk {args.chunk}, prompts "
          f"{prompt[0]}-{prompt[1]}, outputs {output[0]}-{output[1]} tokens, {args.requests} requests a rate, on {gpu}")
    print(f"{'rate/s':>7} {'ok':>4} {'tok/s':>9} {'vs static':>9} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>7}")
    for r in rows:
        vs = f"{r['tokens_per_s'] / static['tokens_per_s']:.2f}x" if static else "-"
        print(f"{r['rate']:>7} {r['ok']:>4} {r['tokens_per_s']:>9.0f} {vs:>9} {r['ttft_p50_ms']:>8.1f}m "
              f"{r['ttft_p99_ms']:>7.1f}m {r['itl_p50_ms']:>7.2f}m {r['itl_p99_ms']:>6.2f}m")
    if static:
        print(f"static-batch generate, {args.max_batch} rows: {static['tokens_per_s']:.0f} tok/s; one prompt alone: "
              f"prefill + a step {static['alone_prefill_plus_step_ms']:.1f} ms (times in ms)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "static": static, "gpu": gpu}, f, indent=1)
    if args.plot and rows:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        x = [r["tokens_per_s"] for r in rows]
        ax[0].plot(x, [r["ttft_p50_ms"] for r in rows], "o-", label="TTFT p50")
        ax[0].plot(x, [r["ttft_p99_ms"] for r in rows], "o--", label="TTFT p99")
        ax[1].plot(x, [r["itl_p50_ms"] for r in rows], "o-", label="ITL p50")
        ax[1].plot(x, [r["itl_p99_ms"] for r in rows], "o--", label="ITL p99")
        for a in ax:
            a.set_xlabel("output tokens/s")
            a.set_ylabel("ms")
            a.legend()
            if static:
                a.axvline(static["tokens_per_s"], color="gray", ls=":")
        fig.suptitle(f"jaxgpt serve, {args.model} {args.dtype}, {args.max_batch} slots, {gpu}")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
