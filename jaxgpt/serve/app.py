"""``jaxgpt serve``: the HTTP side. A Starlette app over one ``BatchEngine`` per device, served by uvicorn.

Routes: ``POST /v1/completions`` (plain or streamed as server-sent events ending with ``data: [DONE]``),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text). Every error is an OpenAI ``error`` object
with a 4xx status (a 500 only for a fault inside the server, and only for the request it hit). The engines run in
threads of their own; their events reach each request's asyncio queue through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jaxgpt.serve.api import APIError, Choice, Completion, completion_object, new_id, parse_completion, usage
from jaxgpt.serve.engine import BatchEngine, EngineStopped, QueueFull, Request

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (two servers in one process do not mix)."""

    def __init__(self, engines: list[BatchEngine]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("jaxgpt_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("jaxgpt_prompt_tokens", "prompt tokens accepted", registry=r)
        self.generated_tokens = Counter("jaxgpt_generation_tokens", "tokens generated", registry=r)
        Gauge("jaxgpt_queue_depth", "requests waiting for a slot", registry=r).set_function(
            lambda: sum(e.queue_depth for e in engines))
        Gauge("jaxgpt_batch_occupancy", "share of the decode slots holding a request", registry=r).set_function(
            lambda: sum(e.active for e in engines) / sum(e.slots for e in engines))
        Gauge("jaxgpt_slots", "decode slots", registry=r).set(sum(e.slots for e in engines))
        self.ttft = Histogram("jaxgpt_time_to_first_token_seconds", "time from arrival to the first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("jaxgpt_inter_token_latency_seconds", "time between a request's tokens",
                             buckets=LATENCY_BUCKETS, registry=r)


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class Server:
    """The app's state: the engines (one per device), their threads, the served model's name and limits."""

    def __init__(self, engines: list[BatchEngine], model_name: str, *, log: Callable[[str], None] | None = None,
                 on_ready: Callable[[], None] | None = None):
        self.engines, self.model_name = engines, model_name
        cfg = engines[0].engine.config
        self.context, self.vocab_size = engines[0].cache_len, cfg.vocab_size
        self.metrics = Metrics(engines)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.threads: list[threading.Thread] = []
        self.created = int(time.time())
        self.accepting = True
        self.on_ready = on_ready  # called once the app runs (uvicorn's signal handlers are in place by then)
        self.app = Starlette(routes=[
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ], exception_handlers={HTTPException: self._http_error, Exception: self._fault}, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.start()
        if self.on_ready is not None:
            self.on_ready()
        yield
        self.stop()

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self.threads:
            return
        for e in self.engines:
            t = threading.Thread(target=e.run, name="jaxgpt-engine", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        """Stop taking requests; the engines end what is still open (``cancelled``) and their threads join."""
        self.accepting = False
        for e in self.engines:
            e.stop()
        for t in self.threads:
            t.join(timeout=30)

    def _engine(self) -> BatchEngine:
        return min(self.engines, key=lambda e: e.load())

    # ------------------------------------------------------------------------------------------- routes
    async def _http_error(self, request: HTTPRequest, exc: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        self.metrics.requests.labels(request.url.path, str(exc.status_code)).inc()
        return _error(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind))

    async def _fault(self, request: HTTPRequest, exc: Exception) -> JSONResponse:
        self.log(f"error: {request.method} {request.url.path}: {type(exc).__name__}: {exc}")
        self.metrics.requests.labels(request.url.path, "500").inc()
        return _error(APIError(500, f"internal error: {type(exc).__name__}", kind="server_error"))

    async def health(self, request: HTTPRequest) -> Response:
        alive = all(t.is_alive() for t in self.threads) and self.accepting
        return JSONResponse({"status": "ok" if alive else "unavailable"}, status_code=200 if alive else 503)

    async def models(self, request: HTTPRequest) -> Response:
        self.metrics.requests.labels("/v1/models", "200").inc()
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "jaxgpt"}]})

    async def metrics_text(self, request: HTTPRequest) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def completions(self, request: HTTPRequest) -> Response:
        try:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise APIError(400, f"the request body is not valid JSON: {e}") from None
            c = parse_completion(body, model_name=self.model_name, context=self.context,
                                 vocab_size=self.vocab_size)
            if not self.accepting:
                raise APIError(503, "the server is shutting down", kind="server_error")
            run = _Run(self, c)
            run.submit()
        except APIError as e:
            self.metrics.requests.labels("/v1/completions", str(e.status)).inc()
            return _error(e)
        self.metrics.prompt_tokens.inc(sum(len(p) for p in c.prompts) * c.n)
        if c.stream:
            self.metrics.requests.labels("/v1/completions", "200").inc()
            return StreamingResponse(run.stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            result = await run.collect()
        except APIError as e:
            self.metrics.requests.labels("/v1/completions", str(e.status)).inc()
            return _error(e)
        finally:
            run.cancel()  # a handler cancelled because its client left: its requests leave the engine too
        self.metrics.requests.labels("/v1/completions", "200").inc()
        return JSONResponse(result)


class _Run:
    """One HTTP request's choices in flight: ``len(prompts) * n`` engine requests and the events they send."""

    def __init__(self, server: Server, c: Completion):
        self.server, self.c, self.id = server, c, new_id()
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.created = int(time.time())
        self.choices: list[Choice] = []
        self.reqs: list[tuple[BatchEngine, Request]] = []
        base = c.seed if c.seed is not None else random.randrange(2 ** 31)
        for p, ids in enumerate(c.prompts):
            for j in range(c.n):
                k = p * c.n + j
                self.choices.append(Choice(k, ids, c.echo, c.logprobs))
                req = Request(ids=ids, max_tokens=c.max_tokens, on_event=self._sink(k), temperature=c.temperature,
                              top_k=c.top_k, top_p=c.top_p, seed=(base + j) % (2 ** 31), stop=c.stop,
                              logprobs=c.logprobs is not None, stop_at_eos=not c.ignore_eos)
                self.reqs.append((server._engine(), req))
        self.open = len(self.reqs)
        self.last_token_t = [None] * len(self.reqs)

    def _sink(self, k: int):
        def on_event(kind: str, value) -> None:  # the engine's thread
            self.loop.call_soon_threadsafe(self.events.put_nowait, (k, kind, value, time.perf_counter()))
        return on_event

    def submit(self) -> None:
        done = []
        try:
            for e, r in self.reqs:
                e.submit(r)
                done.append((e, r))
        except (QueueFull, EngineStopped) as err:
            for e, r in done:
                e.cancel(r)
            if isinstance(err, EngineStopped):
                raise APIError(503, f"the server cannot take requests: {err}", kind="server_error") from None
            raise APIError(429, f"the server is busy: {err}; retry later", kind="rate_limit_error") from None

    def cancel(self) -> None:
        for e, r in self.reqs:
            if r.finish_reason is None:
                e.cancel(r)

    async def _next(self):
        """The next event as ``(choice index, piece dict or None)``; raises ``APIError`` for an engine error."""
        k, kind, value, t = await self.events.get()
        ch, m = self.choices[k], self.server.metrics
        if kind == "tokens":
            real = sum(tok.id >= 0 for tok in value)
            if real:
                m.generated_tokens.inc(real)
                last = self.last_token_t[k]
                if last is None:
                    m.ttft.observe(t - self.reqs[k][1].t_submit)
                else:
                    for _ in range(real):
                        m.itl.observe((t - last) / real)
                self.last_token_t[k] = t
            return k, ch.add(value)
        self.open -= 1
        if kind == "error":
            raise APIError(503, f"the request could not finish: {value}", kind="server_error")
        ch.finish_reason = "length" if value == "length" else "stop"
        return k, ch.streamed("", len(ch.tokens))

    def _usage(self) -> dict:
        return usage(sum(len(p) for p in self.c.prompts) * self.c.n, sum(ch.completion_tokens for ch in self.choices))

    async def collect(self) -> dict:
        while self.open:
            await self._next()
        return completion_object(self.id, self.c.model, [ch.final() for ch in self.choices], self._usage(),
                                 self.created)

    async def stream(self):
        def sse(obj) -> str:
            return f"data: {json.dumps(obj)}\n\n"
        try:
            if self.c.echo:
                for ch in self.choices:
                    yield sse(completion_object(self.id, self.c.model, [ch.streamed(ch.text, 0)], None, self.created))
            while self.open:
                try:
                    k, piece = await self._next()
                except APIError as e:
                    yield sse(e.body())
                    break
                if piece["text"] or piece["finish_reason"] or (piece["logprobs"] and piece["logprobs"]["tokens"]):
                    yield sse(completion_object(self.id, self.c.model, [piece], None, self.created))
            else:
                yield sse(completion_object(self.id, self.c.model, [], self._usage(), self.created))
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # a client that went away mid-stream frees its slots at the next decode call


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), IPv4 or IPv6 as ``host`` says."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(server: Server, sock: socket.socket, *, graceful_s: float = 30.0) -> None:
    """Serve until SIGINT/SIGTERM: then stop accepting connections, let open requests finish (up to
    ``graceful_s``), end the rest as cancelled and return."""
    import uvicorn

    class _Uvicorn(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # uvicorn's own re-raises the signal at the end: the process would not exit 0
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    config = uvicorn.Config(server.app, log_level="warning", timeout_graceful_shutdown=graceful_s, lifespan="on")
    _Uvicorn(config).run(sockets=[sock])
