"""``python -m jaxgpt`` / ``jaxgpt``: subcommands over the public API.

Every user error (bad flag, empty prompt, unreadable checkpoint, missing GPU...) prints one line on stderr and exits
with status 2; nothing below this module prints results or exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse's default prints the usage block first)
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _common(p: argparse.ArgumentParser, sampling: bool = False) -> None:
    from jaxgpt.backends import BACKENDS
    p.add_argument("--model", default=None, help="preset: gpt2 (default), gpt2-medium, gpt2-large, gpt2-xl; "
                   "weights from the HF cache or hub, else random")
    p.add_argument("--checkpoint", metavar="PATH", help="HF model directory, model.safetensors, sharded "
                   "model.safetensors.index.json, or pytorch_model.bin (loaded with weights_only=True)")
    p.add_argument("--config", metavar="JSON", help="HF config.json for a custom shape")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (default float32)")
    p.add_argument("--device", default=None, choices=["cpu", "gpu"], help="default: the best available")
    p.add_argument("--backend", default="xla", choices=list(BACKENDS), help="op implementations (default xla)")
    p.add_argument("--kernels", default=None, metavar="OP=KERNEL,...",
                   help="pallas backend: force a kernel per op (default: the measured rules pick): "
                        "attention=mosaic|triton|xla, matmul=xla|mosaic|triton, decode=block|fused|unfused, "
                        "head=fused|xla")
    _weights_seed(p, sampling)
    p.add_argument("--quantize", choices=["int8", "int4", "int8+head", "int4+head"], default=None,
                   help="quantize the projections on load (weight-only; int4 in groups of 128; +head: an int8 "
                        "copy of the tied LM head too)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table: one object, UTF-8 (predict "
                   "with several prompts: one object a line, JSON Lines)")
    p.add_argument("--verbose", "-v", action="store_true", help="timings and details on stderr")
    _command_buffers(p)


def _weights_seed(p: argparse.ArgumentParser, sampling: bool = False) -> None:
    p.add_argument("--weights-seed", type=int, default=0, metavar="N",
                   help="seed of the random weights used when no weights are found (default 0; the recipe "
                        "python -m reference shares: docs/architecture.md)")
    if not sampling:  # a --seed here gets a pointer to --weights-seed (main), not argparse's "unrecognized"
        p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)


def _command_buffers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-command-buffers", action="store_true",
                   help="do not record XLA command buffers (CUDA graphs); on by default")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """``jaxgpt bench``'s arguments (its code, ``bench.run``, is loaded only when the command runs)."""
    p.add_argument("what", nargs="?", default="all", choices=["kernels", "model", "all"])
    p.add_argument("--model", default="gpt2,gpt2-xl", help="comma list of presets (default gpt2,gpt2-xl)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--quick", action="store_true", help="the headline cases only")
    p.add_argument("--quantize", default="", metavar="LIST",
                   help="weight formats to add to the model rows, e.g. int8,int4,int8+head (weight-only)")
    p.add_argument("--out", default=None, metavar="DIR", help="write results.json, results.md and plots here")
    _command_buffers(p)


def _parallel(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-parallel", action="store_true", help="split the batch over every device")
    p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="shard the weights over N devices, Megatron style (xla backend; N divides n_head)")
    p.add_argument("--distributed", action="store_true", help="join a multi-process run first "
                   "(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="jaxgpt", description="GPT-2 inference in JAX with Pallas kernels.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("predict", help="top-k next tokens and the greedy continuation of a prompt")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="text to continue (several: one batch)")
    p.add_argument("--top-k", type=int, default=10, help="candidates to list (default 10)")
    _common(p)
    _parallel(p)
    p = sub.add_parser("generate", help="continue prompts token by token (KV cache, one compiled loop)")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="text to continue (several: one batch)")
    p.add_argument("--batch-file", metavar="FILE", help="one prompt a line (blank lines skipped), all as one batch")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to add per prompt (default 50)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k best tokens (default 0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)")
    p.add_argument("--stop", action="append", default=[], metavar="STRING",
                   help="end a row at this string (repeatable); rows always end at <|endoftext|> unless "
                        "--ignore-eos")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at <|endoftext|>")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of as it comes")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0); the model's random weights, "
                   "if any, take --weights-seed")
    _common(p, sampling=True)
    _parallel(p)
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (POST /v1/completions) with continuous "
                       "batching; needs the serve extra: pip install -e '.[serve]'")
    _common(p, sampling=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, printed)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the name clients ask for (default: --model, or the checkpoint's directory name)")
    p.add_argument("--max-batch", type=int, default=64, help="decode slots: requests decoded at once (default 64)")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="requests that may wait for a slot; beyond them a request gets 429 (default 1024)")
    p.add_argument("--max-context", type=int, default=None, metavar="N",
                   help="prompt + completion tokens a request may hold (default and most: the model's n_ctx)")
    p.add_argument("--chunk", type=int, default=16,
                   help="decode steps between two looks at the queue (default 16)")
    p.add_argument("--prefill-batch", type=int, default=4, help="prompts prefilled in one call (default 4)")
    p.add_argument("--data-parallel", action="store_true",
                   help="one engine on every local device; each request goes to the least busy")
    p = sub.add_parser("bench", help="kernels and whole model vs XLA and the peers (GPU; a smoke run on CPU; "
                       "from a clone of the repository)")
    add_bench_arguments(p)
    p = sub.add_parser("parity", help="compare against the PyTorch reference on the same weights "
                       "(with --quantize: the quantized model against the float one)")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--steps", type=int, default=8, help="greedy steps to compare (default 8)")
    p.add_argument("--top-k", type=int, default=10)
    _common(p)
    p = sub.add_parser("quantize", help="write a weight-only int8/int4 checkpoint (safetensors + quantization.json)")
    p.add_argument("--bits", type=int, choices=[8, 4], required=True, help="8: per-channel int8; 4: group-wise int4")
    p.add_argument("--group", type=int, default=None, help="int4 group size along the input dimension (default 128)")
    p.add_argument("--lm-head", action="store_true", help="also store an int8 copy of the tied LM head")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (created; files replaced whole)")
    p.add_argument("--model", default=None, help="preset whose weights to quantize (HF cache or hub)")
    p.add_argument("--checkpoint", metavar="PATH", help="float checkpoint to quantize")
    p.add_argument("--config", metavar="JSON", help="HF config.json for a custom shape")
    _weights_seed(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    return ap


def _known_config(args):
    """The model's config, from the preset, ``--config`` or the checkpoint's own, before any weights load (None when
    only the tensors would tell)."""
    from jaxgpt.validation import known_config
    return known_config(args.model, args.checkpoint, args.config)


def _check_prompts(prompts: list[str], cfg, max_new_tokens: int | None = None) -> None:
    """Prompts the model can take, checked before it loads: none empty, none past the context (with
    ``max_new_tokens`` to add, when given)."""
    from jaxgpt.errors import UsageError
    if any(p == "" for p in prompts):
        raise UsageError("empty prompt: give some text to continue")
    if cfg is None:
        return
    from jaxgpt.tokenizer import encode
    from jaxgpt.validation import check_ids, check_new_tokens
    rows = [encode(p) for p in prompts]
    check_ids(rows, cfg)
    if max_new_tokens is not None:
        check_new_tokens(rows, max_new_tokens, cfg.n_ctx)


def _load(args):
    from jaxgpt.errors import UsageError
    parallel = {}
    if hasattr(args, "data_parallel"):
        if args.tensor_parallel < 1:
            raise UsageError(f"--tensor-parallel {args.tensor_parallel} must be >= 1")
        if args.distributed:
            from jaxgpt.sharding import initialize_distributed
            initialize_distributed()
        parallel = {"data_parallel": args.data_parallel, "tensor_parallel": args.tensor_parallel}
        if args.distributed:
            import jax
            if jax.process_index() != 0:  # every process computes; the first one reports
                sys.stdout = open(os.devnull, "w")
    from jaxgpt.engine import load_model
    engine = load_model(args.model, checkpoint=args.checkpoint, config=args.config, dtype=args.dtype,
                        device=args.device, backend=args.backend, weights_seed=args.weights_seed,
                        quantize=args.quantize, kernels=args.kernels, **parallel)
    _say_interpreted(engine)
    return engine


def _say_interpreted(engine) -> None:
    if engine.ops.interpreted:
        print("notice: no GPU: the pallas backend runs its kernels in Pallas' interpreter, exact but many times "
              "slower than --backend xla", file=sys.stderr)


def _precision(engine) -> str:
    """The compute dtype, with the weight format of a quantized model: ``float32`` or ``int8 weights, float32``."""
    q = engine.quantization
    return engine.dtype_name if q is None else f"{q.name} weights, {engine.dtype_name}"


def _describe(engine) -> dict:
    layout = getattr(engine, "layout", None)
    return {"model": engine.source, "config": engine.config.describe(),
            "dtype": engine.dtype_name, "device": str(engine.device), "backend": engine.backend,
            "kernels": str(engine.ops.kernels) if engine.backend == "pallas" else None,
            "random_weights": engine.random,
            "quantization": None if engine.quantization is None else engine.quantization.name,
            "mesh": None if layout is None else {"data": layout.data, "tensor": layout.tensor}}


def _verbose(engine) -> None:
    t = engine.timings
    print(f"[jaxgpt] weights: {engine.source} | {engine.config.describe()}", file=sys.stderr)
    print(f"[jaxgpt] {engine.device} | {_precision(engine)} | backend {engine.backend} | compile "
          f"{t.compile_s:.2f} s ({t.compiles} shape{'s' if t.compiles != 1 else ''}) | run {t.run_s * 1e3:.1f} ms",
          file=sys.stderr)


def cmd_predict(args) -> int:
    from jaxgpt.validation import check_top_k
    cfg = _known_config(args)
    check_top_k(args.top_k, None if cfg is None else cfg.vocab_size)
    _check_prompts(args.prompts, cfg)
    engine = _load(args)
    from jaxgpt.predict import format_table, predict
    preds = predict(engine, args.prompts, top_k=args.top_k)
    head = _describe(engine)
    for p in preds:
        if args.json:
            print(json.dumps(p.to_dict(**head), ensure_ascii=False))
        else:
            print(f"{head['model']} · {_precision(engine)} · {engine.device} · {engine.backend}")
            print(f"prompt {p.prompt!r} -> ids {p.prompt_ids}")
            print(format_table(p))
    if args.verbose:
        _verbose(engine)
    return 0


def _read_batch_file(path: str) -> list[str]:
    from jaxgpt.errors import UsageError
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--batch-file {path}: cannot read it ({e.__class__.__name__}: "
                         f"{getattr(e, 'strerror', None) or e})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UsageError(f"--batch-file {path}: no prompts in it (one prompt a line)")
    return prompts


def cmd_generate(args) -> int:
    from jaxgpt.errors import UsageError
    from jaxgpt.validation import check_sampling
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    cfg = _known_config(args)
    check_sampling(args.temperature, args.top_k, args.top_p, None if cfg is None else cfg.vocab_size)
    if args.batch_file and args.prompts:
        raise UsageError("give prompts or --batch-file, not both")
    prompts = _read_batch_file(args.batch_file) if args.batch_file else args.prompts
    if not prompts:
        raise UsageError("no prompt given: pass text or --batch-file FILE")
    _check_prompts(prompts, cfg, args.max_new_tokens)
    engine = _load(args)
    from jaxgpt.generate import generate
    live = len(prompts) == 1 and not args.json and not args.no_stream
    started = []  # the prompt is written with the first streamed text: an error before it leaves stdout empty

    def stream(row: int, text: str) -> None:
        if not started:
            sys.stdout.write(prompts[0])
            started.append(True)
        sys.stdout.write(text)
        sys.stdout.flush()

    from jaxgpt.generate import GenerationInterrupted
    status = 0
    try:
        out = generate(engine, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop,
                       stop_at_eos=not args.ignore_eos, stream=stream if live else None)
    except GenerationInterrupted as e:  # Ctrl-C: what was generated so far, then exit status 130
        out, status = e.result, 130
        print("interrupted: printing what was generated so far", file=sys.stderr)
    stats = {"new_tokens": out.new_tokens, "tokens_per_s": round(out.tokens_per_s, 2),
             "prefill_ms": round(out.prefill_s * 1e3, 3), "decode_ms_per_step": round(out.decode_ms_per_step, 4),
             "compile_s": round(engine.timings.compile_s, 3)}
    if args.json:
        print(json.dumps({**_describe(engine), "prompts": prompts, "prompt_ids": [r.prompt_ids for r in out],
                          "ids": [r.ids for r in out], "text": [r.text for r in out],
                          "finish_reason": [r.finish_reason for r in out], **stats,
                          "sampling": {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                                       "seed": args.seed}}, ensure_ascii=False))
    elif live:
        print("" if started else prompts[0])
    else:
        for i, r in enumerate(out):
            print(f"--- [{i}] {r.finish_reason}, {len(r.ids)} tokens")
            print(r.prompt + r.text)
    if args.verbose or (not args.json and not live):
        print(f"[jaxgpt] {out.new_tokens} tokens in {(out.prefill_s + out.decode_s) * 1e3:.1f} ms "
              f"({out.tokens_per_s:.1f} tokens/s; prefill {out.prefill_s * 1e3:.1f} ms, decode "
              f"{out.decode_ms_per_step:.2f} ms/step)", file=sys.stderr)
    if args.verbose:
        _verbose(engine)
    return status


def cmd_parity(args) -> int:
    from jaxgpt.errors import UsageError
    from jaxgpt.validation import check_top_k
    if args.steps < 0:
        raise UsageError(f"--steps {args.steps} must be >= 0")
    cfg = _known_config(args)
    check_top_k(args.top_k, None if cfg is None else cfg.vocab_size)
    _check_prompts(args.prompts, cfg)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("parity needs torch for the reference model: pip install 'jaxgpt[torch]'") from None
    from jaxgpt import parity
    from jaxgpt.engine import Engine, load_weights, resolve_device
    device = resolve_device(args.device)
    cfg, sd, source, random = load_weights(args.model, args.checkpoint, args.config, args.weights_seed)
    check_top_k(args.top_k, cfg.vocab_size)
    if args.quantize:
        return _quantized_parity(args, cfg, sd, source, random, device)
    engine = Engine(cfg, sd, dtype=args.dtype, device=device, backend=args.backend, source=source, random=random,
                    kernels=args.kernels)
    _say_interpreted(engine)
    tdev = "cuda" if device.platform == "gpu" and torch.cuda.is_available() else "cpu"
    ref = parity.reference_model(cfg, sd, "float32", tdev)
    ref_lowp = parity.reference_model(cfg, sd, args.dtype, tdev) if args.dtype != "float32" else None
    del sd
    results = parity.compare(engine, ref, args.prompts, steps=args.steps, top_k=args.top_k, ref_lowp=ref_lowp)
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({**_describe(engine), "ok": ok, "results": [
            {**vars(r), "ok": r.ok} for r in results]}, ensure_ascii=False))
    else:
        print(f"parity: jaxgpt ({engine.backend}, {_precision(engine)}, {engine.device}) vs reference "
              f"(PyTorch float32, {tdev}) | {source}")
        print(parity.format_report(results, engine))
        print("PASS: every prompt's logits within the tolerance; where an order differs, only near-ties swapped"
              if ok else "FAIL: jaxgpt and the reference disagree beyond the tolerance")
    if args.verbose:
        _verbose(engine)
    return 0 if ok else 1


def _quantized_parity(args, cfg, sd, source, random, device) -> int:
    """``parity --quantize``: the quantized model against the float one on the same weights (a quality report)."""
    from jaxgpt.engine import Engine
    from jaxgpt.errors import UsageError
    from jaxgpt.checkpoint import is_quantized
    from jaxgpt.parity import agreement, format_agreement
    from jaxgpt.tokenizer import encode
    if is_quantized(sd):
        raise UsageError("parity --quantize needs float weights to compare against (not a quantized checkpoint)")
    kw = dict(dtype=args.dtype, device=device, backend=args.backend, source=source, random=random,
              kernels=args.kernels)
    ref = Engine(cfg, sd, **kw)
    engine = Engine(cfg, sd, quantize=args.quantize, **kw)
    _say_interpreted(engine)
    del sd
    report = agreement(ref, engine, [encode(p) for p in args.prompts], steps=args.steps, top_k=args.top_k)
    ok = report["finite"]
    if args.json:
        print(json.dumps({**_describe(engine), "ok": ok, **report}, ensure_ascii=False))
    else:
        print(f"quantization quality: jaxgpt {args.quantize} vs jaxgpt {args.dtype} (same weights, {args.backend}, "
              f"{engine.device}) | {source}")
        print(format_agreement(report))
    return 0 if ok else 1


def cmd_quantize(args) -> int:
    import pathlib

    from jaxgpt.errors import UsageError
    from jaxgpt.checkpoint import Scheme, is_quantized, save_quantized
    scheme = Scheme.parse(f"int{args.bits}", args.group, head=args.lm_head)
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    _known_config(args)  # a bad --model or --config fails before the weights load
    from jaxgpt.engine import load_weights
    from jaxgpt.quantize import quantize_state_dict, run_bytes
    cfg, sd, source, random = load_weights(args.model, args.checkpoint, args.config, args.weights_seed)
    if is_quantized(sd):
        raise UsageError(f"{source} is already quantized")
    before = run_bytes(sd, cfg)
    q = quantize_state_dict(sd, cfg, scheme)
    after = run_bytes(q, cfg)
    save_quantized(q, cfg, out, source=source, random=random)
    info = {"out": str(out), "source": source, "scheme": scheme.to_json(), "bf16_bytes": before, "bytes": after}
    if args.json:
        print(json.dumps(info))
    else:
        mib = 2 ** 20
        print(f"wrote {out} ({scheme.name}{'' if scheme.group is None else f', groups of {scheme.group}'}) | {source}\n"
              f"projections {after['projections'] / mib:.1f} MiB (bf16: {before['projections'] / mib:.1f} MiB, "
              f"{after['projections'] / before['projections']:.2f}x); whole model in bf16 "
              f"{after['total'] / mib:.1f} MiB (was {before['total'] / mib:.1f} MiB); embeddings, LayerNorms and "
              "biases stay float (stored float32)")
    return 0


def _valid_text(args) -> None:
    """Prompts and stop strings as valid text. Bytes of argv that are not UTF-8 reach Python as lone surrogates,
    which no UTF-8 output can hold: they become U+FFFD, with one notice on stderr."""
    fixed = 0
    for name in ("prompts", "stop"):
        values = getattr(args, name, None)
        if values:
            clean = [_replace_undecodable(v) for v in values]
            fixed += sum(a != b for a, b in zip(values, clean))
            setattr(args, name, clean)
    if fixed:
        print(f"notice: {fixed} argument{'s are' if fixed > 1 else ' is'} not valid UTF-8: each undecodable byte was "
              "replaced by U+FFFD before tokenizing", file=sys.stderr)


def _replace_undecodable(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # argv's undecodable bytes (U+DC80..U+DCFF): back to bytes, then each invalid sequence to U+FFFD
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def _safe_stdout(json_out: bool) -> None:
    """Output that text cannot break: ``--json`` is written as UTF-8 whatever the locale says, and a character the
    stream's encoding cannot hold is replaced instead of raising halfway through the output."""
    out = sys.stdout
    if not hasattr(out, "reconfigure"):
        return
    try:
        out.reconfigure(**({"encoding": "utf-8"} if json_out else {}), errors="replace")
    except (ValueError, OSError):
        pass


def _quiet_native_stdout() -> None:
    """Multi-process runs: native libraries (gloo) print to file descriptor 1; send that to stderr and keep
    Python's stdout for our results, so ``--json`` stays parseable."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = real


def cmd_serve(args) -> int:
    from jaxgpt.errors import UsageError
    # the flags first: a bad one answers before jax is imported
    for name in ("max_batch", "max_queue", "chunk", "prefill_batch"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} must be between 0 and 65535")
    if args.max_context is not None and args.max_context < 2:
        raise UsageError(f"--max-context {args.max_context} must be >= 2")
    try:
        from jaxgpt.serve.app import Server, bind, serve
    except ImportError as e:
        raise UsageError(f"jaxgpt serve needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") \
            from None
    try:
        sock = bind(args.host, args.port)  # before the weights load: a taken port fails at once
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    from jaxgpt.serve.engine import BatchEngine
    engines = _serve_engines(args)
    batch = [BatchEngine(e, slots=args.max_batch, chunk=args.chunk, prefill_batch=args.prefill_batch,
                         max_queue=args.max_queue, cache_len=args.max_context) for e in engines]
    import pathlib
    import time
    name = args.served_model_name or args.model or (
        pathlib.Path(args.checkpoint).resolve().name if args.checkpoint else "gpt2")
    t0 = time.perf_counter()
    for k, b in enumerate(batch):
        def progress(i, n, k=k):
            print(f"\rcompiling the server's calls: {i}/{n}" + (f" (device {k + 1}/{len(batch)})" if len(batch) > 1
                  else ""), end="", file=sys.stderr, flush=True)
        b.compile(progress)
    print(f"\ncompiled in {time.perf_counter() - t0:.1f} s; no request compiles", file=sys.stderr)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    ready = (f"serving {name} ({engines[0].source}; {_precision(engines[0])}, backend {engines[0].backend}, "
             f"{len(batch)} device{'s' if len(batch) > 1 else ''} x {args.max_batch} slots) on "
             f"http://{shown}:{port}/v1 (Ctrl-C or SIGTERM: finish the open requests and stop)")
    serve(Server(batch, name, on_ready=lambda: print(ready, file=sys.stderr, flush=True)), sock)
    print("server stopped", file=sys.stderr)
    return 0


def _serve_engines(args) -> list:
    """One engine per device: every local device with ``--data-parallel``, else the chosen one."""
    from jaxgpt.engine import Engine, load_weights, resolve_device
    from jaxgpt.backends import get_ops
    jdev = resolve_device(args.device)
    get_ops(args.backend, args.kernels)
    cfg, sd, source, random = load_weights(args.model, args.checkpoint, args.config, args.weights_seed)
    import jax
    devices = jax.local_devices(backend=jdev.platform) if args.data_parallel else [jdev]
    engines = [Engine(cfg, sd, dtype=args.dtype, device=d, backend=args.backend, source=source, random=random,
                      quantize=args.quantize, kernels=args.kernels) for d in devices]
    _say_interpreted(engines[0])
    return engines


def cmd_bench(args) -> int:
    from jaxgpt.errors import UsageError
    try:
        from bench.run import quantize_list, run
    except ImportError:
        raise UsageError("jaxgpt bench runs the benchmarks in bench/, which ship with the source tree, not the "
                         "installed package: run it from a clone of the repository (pip install -e .)") from None
    models = [m for m in args.model.split(",") if m]
    from jaxgpt.config import PRESETS
    bad = [m for m in models if m not in PRESETS]
    if bad:
        raise UsageError(f"unknown model {bad[0]!r}; choose from {', '.join(PRESETS)}")
    if args.out:
        import pathlib
        out = pathlib.Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {args.out}: exists and is not a directory")
    run(args.what, models, args.dtype, args.quick, args.out, quantize_list(args.quantize))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    if not getattr(args, "no_command_buffers", False):
        from jaxgpt.xla_flags import use_command_buffers
        use_command_buffers()  # before anything starts jax's backend (CUDA graphs: fewer launches a decode step)
    from jaxgpt.errors import JaxGPTError, UsageError
    if getattr(args, "distributed", False):
        _quiet_native_stdout()
    _safe_stdout(getattr(args, "json", False))
    _valid_text(args)
    try:
        if getattr(args, "weights_seed", 0) < 0:
            raise UsageError(f"--weights-seed {args.weights_seed} must be >= 0")
        if args.command not in ("generate", "serve") and getattr(args, "seed", None) is not None:
            raise UsageError(f"--seed is generate's sampling seed; {args.command} samples nothing (random weights "
                             "take --weights-seed N)")
        return {"predict": cmd_predict, "generate": cmd_generate, "parity": cmd_parity,
                "bench": cmd_bench, "quantize": cmd_quantize, "serve": cmd_serve}[args.command](args)
    except JaxGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
