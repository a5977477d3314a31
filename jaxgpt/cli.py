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


def _common(p: argparse.ArgumentParser) -> None:
    from jaxgpt.engine import BACKENDS, DEVICES, DTYPES
    p.add_argument("--model", default=None, help="preset: gpt2 (default), gpt2-medium, gpt2-large, gpt2-xl; "
                   "weights from the HF cache or hub, else random")
    p.add_argument("--checkpoint", metavar="PATH", help="HF model directory, model.safetensors, sharded "
                   "model.safetensors.index.json, or pytorch_model.bin (loaded with weights_only=True)")
    p.add_argument("--config", metavar="JSON", help="HF config.json for a custom shape")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="compute dtype (default float32)")
    p.add_argument("--device", default=None, choices=list(DEVICES), help="default: the best available")
    p.add_argument("--backend", default="xla", choices=list(BACKENDS), help="op implementations (default xla)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--verbose", "-v", action="store_true", help="timings and details on stderr")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="jaxgpt", description="GPT-2 inference in JAX with Pallas kernels.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("predict", help="top-k next tokens and the greedy continuation of a prompt")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="text to continue (several: one batch)")
    p.add_argument("--top-k", type=int, default=10, help="candidates to list (default 10)")
    _common(p)
    p = sub.add_parser("parity", help="compare against the PyTorch reference on the same weights")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--steps", type=int, default=8, help="greedy steps to compare (default 8)")
    p.add_argument("--top-k", type=int, default=10)
    _common(p)
    return ap


def _load(args):
    from jaxgpt.engine import load_model
    return load_model(args.model, checkpoint=args.checkpoint, config=args.config, dtype=args.dtype,
                      device=args.device, backend=args.backend, seed=args.seed)


def _describe(engine) -> dict:
    return {"model": engine.source, "config": engine.config.describe(),
            "dtype": engine.dtype_name, "device": str(engine.device), "backend": engine.backend,
            "random_weights": engine.random}


def _verbose(engine) -> None:
    t = engine.timings
    print(f"[jaxgpt] weights: {engine.source} | {engine.config.describe()}", file=sys.stderr)
    print(f"[jaxgpt] {engine.device} | {engine.dtype_name} | backend {engine.backend} | compile "
          f"{t.compile_s:.2f} s ({t.compiles} shape{'s' if t.compiles != 1 else ''}) | run {t.run_s * 1e3:.1f} ms",
          file=sys.stderr)


def cmd_predict(args) -> int:
    from jaxgpt.predict import check_top_k, format_table, predict
    if args.top_k < 1:
        check_top_k(args.top_k, 1 << 30)
    if any(p == "" for p in args.prompts):
        from jaxgpt.errors import UsageError
        raise UsageError("empty prompt: give some text to continue")
    engine = _load(args)
    preds = predict(engine, args.prompts, top_k=args.top_k)
    head = _describe(engine)
    for p in preds:
        if args.json:
            print(json.dumps(p.to_dict(**head), ensure_ascii=False))
        else:
            print(f"{head['model']} · {engine.dtype_name} · {engine.device} · {engine.backend}")
            print(f"prompt {p.prompt!r} -> ids {p.prompt_ids}")
            print(format_table(p))
    if args.verbose:
        _verbose(engine)
    return 0


def cmd_parity(args) -> int:
    from jaxgpt import parity
    from jaxgpt.engine import Engine, load_weights, resolve_device
    from jaxgpt.errors import UsageError
    from jaxgpt.predict import check_top_k
    if args.steps < 0:
        raise UsageError(f"--steps {args.steps} must be >= 0")
    if any(p == "" for p in args.prompts):
        raise UsageError("empty prompt: give some text to continue")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("parity needs torch for the reference model: pip install 'jaxgpt[torch]'") from None
    device = resolve_device(args.device)
    cfg, sd, source, random = load_weights(args.model, args.checkpoint, args.config, args.seed)
    check_top_k(args.top_k, cfg.vocab_size)
    engine = Engine(cfg, sd, dtype=args.dtype, device=device, backend=args.backend, source=source, random=random)
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
        print(f"parity: jaxgpt ({engine.backend}, {engine.dtype_name}, {engine.device}) vs reference "
              f"(PyTorch float32, {tdev}) | {source}")
        print(parity.format_report(results, engine))
        print("PASS" if ok else "FAIL: jaxgpt and the reference disagree beyond the tolerance")
    if args.verbose:
        _verbose(engine)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from jaxgpt.errors import JaxGPTError
    try:
        return {"predict": cmd_predict, "parity": cmd_parity}[args.command](args)
    except JaxGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
