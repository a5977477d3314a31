"""``jaxgpt serve``: the real ``openai`` client against a server on 127.0.0.1, continuous batching against
``generate``, bad input, a client that leaves mid-stream, SIGTERM under load."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")

from jaxgpt.checkpoint import save_safetensors  # noqa: E402
from jaxgpt.config import GPTConfig  # noqa: E402
from jaxgpt.engine import Engine  # noqa: E402
from jaxgpt.generate import generate  # noqa: E402
from jaxgpt.serve.app import Server, bind  # noqa: E402
from jaxgpt.serve.engine import BatchEngine, QueueFull, Request  # noqa: E402
from jaxgpt.weights import random_state_dict  # noqa: E402

pytestmark = pytest.mark.xdist_group("serve")  # one server per worker: keep this file's tests together

# A small model whose greedy text varies from token to token (GPT-2's init at this size repeats one token): the
# matrices scaled up 10x; GPT-2's vocabulary, so text prompts tokenize as for GPT-2.
CFG = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_ctx=64)
NAME = "lively"


def lively_state_dict():
    return {k: (v * 10 if v.ndim == 2 else v) for k, v in random_state_dict(CFG, 1).items()}


@pytest.fixture(scope="module")
def engine():
    return Engine(CFG, lively_state_dict(), dtype="float32")


@pytest.fixture(scope="module")
def server(engine):
    """A server with 4 slots (fewer than the clients of the batching test: requests wait and slots are reused)."""
    batch = BatchEngine(engine, slots=4, chunk=4, prefill_batch=2, max_queue=256)
    batch.compile()
    with _in_thread(Server([batch], NAME, log=lambda msg: None)) as (url, srv):
        yield url, srv


@contextlib.contextmanager
def _in_thread(srv):
    """``srv`` on a free port of 127.0.0.1, uvicorn in a thread: ``(base url, srv)``."""
    import uvicorn
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    userver = uvicorn.Server(uvicorn.Config(srv.app, log_level="error", lifespan="on"))
    t = threading.Thread(target=userver.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url, srv
    finally:
        userver.should_exit = True
        t.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def ids_of(text: str) -> list[int]:
    from jaxgpt.tokenizer import encode
    return encode(text)


def alone(engine, prompt, n, **kw):
    """What ``generate`` gives ``prompt`` run alone."""
    return generate(engine, [prompt], max_new_tokens=n, **kw)[0]


def test_plain_completion_equals_generate(client, engine):
    r = client.completions.create(model=NAME, prompt="Dobby is a free elf", max_tokens=12, temperature=0)
    ref = alone(engine, "Dobby is a free elf", 12)
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason in ("length", "stop")
    assert r.object == "text_completion" and r.model == NAME and r.id.startswith("cmpl-")
    assert r.usage.prompt_tokens == len(ids_of("Dobby is a free elf"))
    assert r.usage.completion_tokens == len(ref.ids) and r.usage.total_tokens == r.usage.prompt_tokens + len(ref.ids)


def test_streamed_text_equals_the_plain_text(client):
    plain = client.completions.create(model=NAME, prompt="The cat sat", max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model=NAME, prompt="The cat sat", max_tokens=20, temperature=0,
                                            stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [plain.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stop_string_cuts_the_text(client, engine):
    full = alone(engine, "Once upon a time", 30, stop_at_eos=False).text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert len(stop) == 2
    r = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=30, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == full[:full.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    s = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=30, temperature=0, stop=stop,
                                  stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in s if c.choices) == r.choices[0].text


def test_logprobs_are_the_models(client, engine):
    prompt = "Hello there"
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.completion_tokens == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
    logits = engine.last_logits([ids_of(prompt)])[0].astype(np.float64)  # the first token's distribution
    logz = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
    assert lp.token_logprobs[0] == pytest.approx(logits.max() - logz, abs=1e-4)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and chosen <= 0 and max(top.values()) == pytest.approx(chosen, abs=1e-6)  # greedy


def test_seeded_sampling_is_reproducible_and_equals_generate(client, engine):
    kw = dict(model=NAME, prompt="A seed", max_tokens=10, temperature=0.9, top_p=0.95, seed=7)
    a = client.completions.create(**kw).choices[0].text
    assert a == client.completions.create(**kw).choices[0].text
    assert a == alone(engine, "A seed", 10, temperature=0.9, top_p=0.95, seed=7).text
    others = {client.completions.create(**{**kw, "seed": s}).choices[0].text for s in (1, 2, 3)}
    assert others - {a}, "other seeds never changed the text"


def test_n_choices_and_token_id_prompts(client, engine):
    rows = [ids_of("one two"), ids_of("three")]
    r = client.completions.create(model=NAME, prompt=rows, max_tokens=5, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for k, c in enumerate(r.choices):
        assert c.text == alone(engine, rows[k // 2], 5).text
    s = client.completions.create(model=NAME, prompt="n", max_tokens=8, temperature=1.0, n=3, seed=3)
    assert sorted(c.index for c in s.choices) == [0, 1, 2] and len({c.text for c in s.choices}) > 1


def test_echo_prepends_the_prompt(client):
    r = client.completions.create(model=NAME, prompt="Echo me", max_tokens=3, temperature=0, echo=True)
    plain = client.completions.create(model=NAME, prompt="Echo me", max_tokens=3, temperature=0)
    assert r.choices[0].text == "Echo me" + plain.choices[0].text


def test_32_staggered_clients_each_get_what_generate_gives_alone(server, engine):
    """Mixed prompt lengths and max_tokens, arriving at staggered times into 4 slots: every greedy response is
    the prompt's own ``generate`` output, token for token."""
    url = server[0]
    rng = np.random.default_rng(0)
    words = "the a dog ran far over hills and slept under green trees while birds sang".split()
    jobs = []
    for k in range(32):
        prompt = " ".join(rng.choice(words, int(rng.integers(1, 20))))
        jobs.append((prompt, int(rng.integers(1, 64 - len(ids_of(prompt)) - 1)), bool(k % 2)))
    got: dict[int, object] = {}

    def one(k):
        prompt, n, stream = jobs[k]
        time.sleep(0.02 * k)
        body = {"model": NAME, "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": stream,
                "logprobs": 1 if k % 5 == 0 else None}
        with httpx.Client(timeout=120) as h:
            if not stream:
                got[k] = h.post(url + "/v1/completions", json=body).json()["choices"][0]["text"]
                return
            text = ""
            with h.stream("POST", url + "/v1/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        for c in json.loads(line[6:])["choices"]:
                            text += c["text"]
            got[k] = text

    threads = [threading.Thread(target=one, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for k, (prompt, n, _) in enumerate(jobs):
        assert got.get(k) == alone(engine, prompt, n).text, f"client {k}: {prompt!r} max_tokens {n}"


def _occupancy(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(re.search(r"^jaxgpt_batch_occupancy (\S+)$", text, re.M).group(1))


def test_a_client_that_leaves_mid_stream_frees_its_slot(server, client, engine):
    url, srv = server
    body = {"model": NAME, "prompt": "Leaving", "max_tokens": 50, "temperature": 0, "stream": True,
            "extra": None}
    body.pop("extra")
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", url + "/v1/completions", json={**body, "ignore_eos": True}) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    break  # the first piece came: leave
    deadline = time.time() + 10
    while _occupancy(url) > 0 and time.time() < deadline:
        time.sleep(0.02)
    assert _occupancy(url) == 0, "the slot of the client that left was not freed"
    r = client.completions.create(model=NAME, prompt="After", max_tokens=4, temperature=0)
    assert r.choices[0].text == alone(engine, "After", 4).text


BAD = [
    (b"{not json", 400, None),
    (b'"a string"', 400, None),
    ({"prompt": "x"}, 400, "model"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ({"model": NAME}, 400, "prompt"),
    ({"model": NAME, "prompt": ""}, 400, "prompt"),
    ({"model": NAME, "prompt": []}, 400, "prompt"),
    ({"model": NAME, "prompt": [1, "a"]}, 400, "prompt"),
    ({"model": NAME, "prompt": [[1], []]}, 400, "prompt"),
    ({"model": NAME, "prompt": [50257]}, 400, "prompt"),
    ({"model": NAME, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": NAME, "prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": NAME, "prompt": "x", "max_tokens": 1.5}, 400, "max_tokens"),
    ({"model": NAME, "prompt": "x", "max_tokens": "9"}, 400, "max_tokens"),
    ({"model": NAME, "prompt": "x", "max_tokens": 64}, 400, "max_tokens"),
    ({"model": NAME, "prompt": [1] * 64, "max_tokens": 1}, 400, "max_tokens"),
    ({"model": NAME, "prompt": "x", "temperature": -0.1}, 400, "temperature"),
    ({"model": NAME, "prompt": "x", "temperature": 2.5}, 400, "temperature"),
    ({"model": NAME, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": NAME, "prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"model": NAME, "prompt": "x", "top_k": -1}, 400, "top_k"),
    ({"model": NAME, "prompt": "x", "n": 0}, 400, "n"),
    ({"model": NAME, "prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ({"model": NAME, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": NAME, "prompt": "x", "stop": 3}, 400, "stop"),
    ({"model": NAME, "prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"model": NAME, "prompt": "x", "seed": -1}, 400, "seed"),
    ({"model": NAME, "prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"model": NAME, "prompt": "x", "colour": "blue"}, 400, "colour"),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_input_gets_a_4xx_with_an_openai_error(server, body, status, param):
    url = server[0]
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(url + "/v1/completions", **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"].endswith("error")
    assert err["param"] == param
    assert httpx.get(url + "/health").status_code == 200  # still up


def test_unknown_routes_and_methods_answer_in_the_same_shape(server):
    url = server[0]
    for r, status in ((httpx.get(url + "/v1/nothing"), 404), (httpx.get(url + "/v1/completions"), 405)):
        assert r.status_code == status and r.json()["error"]["message"]


def test_models_health_and_metrics(server, client):
    url = server[0]
    assert [m.id for m in client.models.list().data] == [NAME]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    text = httpx.get(url + "/metrics").text
    for name in ("jaxgpt_requests_total", "jaxgpt_prompt_tokens_total", "jaxgpt_generation_tokens_total",
                 "jaxgpt_queue_depth", "jaxgpt_batch_occupancy", "jaxgpt_time_to_first_token_seconds_bucket",
                 "jaxgpt_inter_token_latency_seconds_bucket"):
        assert name in text
    assert re.search(r'jaxgpt_requests_total\{route="/v1/completions",status="200"\} [1-9]', text)


def test_a_full_queue_refuses_at_once(engine):
    b = BatchEngine(engine, slots=1, chunk=2, max_queue=2)  # not running: requests stay queued
    mk = lambda: Request(ids=[1, 2], max_tokens=2, on_event=lambda *a: None)  # noqa: E731
    b.submit(mk())
    b.submit(mk())
    with pytest.raises(QueueFull):
        b.submit(mk())


@pytest.mark.slow  # (the engine itself: every test above; generation split over devices: test_sharding)
def test_data_parallel_engines_share_the_requests(engine):
    """Two engines on two of the 8 CPU devices (``--data-parallel``): requests go to the least busy; every answer
    is still the prompt's own ``generate`` output."""
    import jax
    engines = []
    for d in jax.devices()[:2]:
        e = Engine(CFG, lively_state_dict(), dtype="float32", device=d)
        engines.append(BatchEngine(e, slots=2, chunk=2, prefill_batch=1, cache_len=16))
        engines[-1].compile()
    prompts = [f"row {k} of" for k in range(6)]
    with _in_thread(Server(engines, NAME, log=lambda msg: None)) as (url, _):
        got = {}

        def one(k):
            got[k] = httpx.post(url + "/v1/completions", timeout=60, json={
                "model": NAME, "prompt": prompts[k], "max_tokens": 8, "temperature": 0}).json()["choices"][0]["text"]

        threads = [threading.Thread(target=one, args=(k,)) for k in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert all(b.busy_slot_steps > 0 for b in engines), "a device got no request"
    for k, p in enumerate(prompts):
        assert got[k] == alone(engine, p, 8).text


def test_a_fault_in_one_request_fails_that_request_alone(server, engine):
    """A request whose handling raises (here its event sink) ends with an error; the others in the batch go on, and
    the running server's engine takes the next request."""
    b = server[1].engines[0]
    events: dict[str, list] = {"bad": [], "good": [], "after": []}

    def sink(name):
        def on(kind, value):
            events[name].append((kind, value))
            if name == "bad" and kind == "tokens":
                raise RuntimeError("a broken sink")
        return on

    def wait_done(name):
        deadline = time.time() + 60
        while not (events[name] and events[name][-1][0] in ("done", "error")) and time.time() < deadline:
            time.sleep(0.01)

    prompt = ids_of("A fault")
    b.submit(Request(ids=prompt, max_tokens=12, on_event=sink("bad")))
    b.submit(Request(ids=prompt, max_tokens=12, on_event=sink("good")))
    wait_done("good")
    wait_done("bad")
    b.submit(Request(ids=prompt, max_tokens=3, on_event=sink("after")))
    wait_done("after")
    assert events["bad"][-1][0] == "error" and "a broken sink" in events["bad"][-1][1]
    good = [tok.id for kind, v in events["good"] if kind == "tokens" for tok in v if tok.id >= 0]
    assert good == alone(engine, prompt, 12).ids and events["after"][-1] == ("done", "length")
    assert b.error is None and httpx.get(server[0] + "/health").status_code == 200


def _start(ckpt, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "jaxgpt", "serve", "--checkpoint", str(ckpt), "--port", "0",
                          "--max-batch", "2", "--chunk", "4", "--prefill-batch", "1", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if m:
            return p, m.group(1)
    p.kill()
    raise AssertionError("the server did not start: " + "".join(lines))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("lively")
    save_safetensors(lively_state_dict(), d, CFG)
    return d


def test_sigterm_under_load_finishes_every_accepted_request_and_exits_0(checkpoint):
    p, url = _start(checkpoint)
    results: dict[int, object] = {}
    streaming = threading.Event()
    n = 10  # on 2 slots: most of them wait in the queue when the signal comes

    def one(k):
        body = {"model": checkpoint.name, "prompt": f"request {k}", "max_tokens": 40, "temperature": 0,
                "stream": True, "ignore_eos": True}
        try:
            events = []
            with httpx.Client(timeout=60) as h, h.stream("POST", url + "/v1/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        events.append(line)
                        streaming.set()
            results[k] = (resp.status_code, events)
        except httpx.TransportError as e:  # refused after the signal: a clean error, not a hang
            results[k] = ("transport", repr(e))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    assert streaming.wait(timeout=60)
    p.send_signal(signal.SIGTERM)
    finished_before = len(results)
    for t in threads:
        t.join(timeout=90)
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert finished_before < n and len(results) == n
    for k, (status, events) in results.items():
        if status == "transport":
            continue
        assert status == 200 and events[-1] == "data: [DONE]", (k, events[-3:])
        payloads = [json.loads(e[6:]) for e in events[:-1]]
        finished = [c["finish_reason"] for e in payloads for c in e.get("choices", []) if c["finish_reason"]]
        errors = [e["error"] for e in payloads if "error" in e]
        assert finished == ["length"] or errors, (k, payloads[-2:])


@pytest.mark.parametrize("args,needle", [
    (["--port", "70000"], "--port 70000"),
    (["--max-batch", "0"], "--max-batch 0"),
    (["--chunk", "0"], "--chunk 0"),
])
def test_serve_bad_flags_exit_2_with_one_line(args, needle):
    r = subprocess.run([sys.executable, "-m", "jaxgpt", "serve", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["pallas", "xla"])
def test_gpu_engine_on_gpt2_width_matches_generate_alone(backend):
    """GPT-2 124M's shapes in bfloat16 on the GPU: 12 requests of mixed lengths through 8 slots, each greedy answer
    what ``generate`` gives the prompt in a batch of 8 (the kernel choice, and so the rounding, depends on the
    batch: generate's batch of one may run other kernels than 8 slots; on the CPU, float32, the test above
    compares with the prompt alone)."""
    from jaxgpt.tokenizer import encode
    cfg = GPTConfig.from_name("gpt2")
    eng = Engine(cfg, random_state_dict(cfg, 3), dtype="bfloat16", backend=backend)
    b = BatchEngine(eng, slots=8, chunk=16, prefill_batch=4, cache_len=256)
    b.compile()
    got: dict[int, list] = {}
    done = threading.Event()
    prompts = [encode("Dobby is a house elf. " * (1 + k % 5))[: 8 + 13 * k] for k in range(12)]
    limits = [20 + 9 * k for k in range(12)]

    def sink(k):
        def on(kind, value):
            if kind == "tokens":
                got.setdefault(k, []).extend(t.id for t in value if t.id >= 0)
            elif kind in ("done", "error"):
                got.setdefault(("end", k), value)
                if sum(isinstance(x, tuple) for x in got) == len(prompts):
                    done.set()
        return on

    t = threading.Thread(target=b.run, daemon=True)
    t.start()
    for k, (p, n) in enumerate(zip(prompts, limits)):
        b.submit(Request(ids=p, max_tokens=n, on_event=sink(k), stop_at_eos=False))
    assert done.wait(timeout=300)
    b.stop()
    t.join(timeout=60)
    for k, (p, n) in enumerate(zip(prompts, limits)):
        ref = generate(eng, [p] + prompts[:7], max_new_tokens=n, stop_at_eos=False)[0].ids
        assert got[("end", k)] == "length" and got[k] == ref, f"request {k}"
