"""``python -m reference predict "Dobby is" [--checkpoint PATH]``: the oracle's own top-k table.

The same table and the same error discipline as ``jaxgpt predict``: bad input is one ``error:`` line on stderr and
exit status 2, never a traceback. Without ``--checkpoint`` the weights come from the HF cache (or hub), else from the
documented random-weights recipe (``reference.weights``), which jaxgpt follows too: for the same ``--weights-seed``
both start from the same weights and print the same table.
"""

import argparse
import sys

from reference.weights import SIZES, CheckpointError


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse's default prints the usage block first)
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m reference", description="The PyTorch GPT-2 oracle jaxgpt is checked against.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    p = sub.add_parser("predict", help="top-k next tokens of a prompt")
    p.add_argument("prompt")
    p.add_argument("--checkpoint", metavar="PATH", help="float HF model directory or weights file (safetensors, or "
                   "a PyTorch file read weights-only)")
    p.add_argument("--model", default="gpt2", choices=list(SIZES), help="size to find in the HF cache, else to "
                   "give random weights (default gpt2)")
    p.add_argument("--config", metavar="JSON", help="HF config.json for a custom shape")
    p.add_argument("--weights-seed", type=int, default=0, metavar="N",
                   help="seed of the random weights (default 0; the recipe jaxgpt shares: docs/architecture.md)")
    p.add_argument("--top-k", type=int, default=10, help="candidates to list (default 10)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # a character the terminal cannot show is replaced, not fatal
        sys.stdout.reconfigure(errors="replace")
    try:
        return predict(args)
    except (UsageError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _valid_text(text: str) -> str:
    """argv bytes that are not UTF-8 (lone surrogates in Python) -> U+FFFD, with a notice."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    print("notice: the prompt is not valid UTF-8: each undecodable byte was replaced by U+FFFD", file=sys.stderr)
    return raw.decode("utf-8", "replace")


def predict(args) -> int:
    prompt = _valid_text(args.prompt)
    if not prompt:
        raise UsageError("empty prompt: give some text to continue")
    if args.weights_seed < 0:
        raise UsageError(f"--weights-seed {args.weights_seed} must be >= 0")
    try:
        import torch
    except ImportError:
        raise UsageError("the reference runs on PyTorch: pip install torch") from None
    from reference.model import GPT2, GPT2Config, load_gpt2, read_config
    from reference.tokens import gpt2_encoding
    from reference.weights import find_pretrained, random_state_dict

    cfg = read_config(args.config) if args.config else None
    if args.checkpoint:
        model, source = load_gpt2(args.checkpoint, cfg), args.checkpoint
    else:
        found = None if cfg is not None else find_pretrained(args.model)
        if found is not None:
            model, source = load_gpt2(found, GPT2Config(*SIZES[args.model])), f"{args.model} ({found})"
        else:
            cfg = cfg or GPT2Config(*SIZES[args.model])
            name = "custom" if args.config else args.model
            source = f"{name}, random weights (weights seed {args.weights_seed})"
            print(f"WARNING: no weights found for {name}: using random weights (weights seed {args.weights_seed}); "
                  "the output is meaningless. Pass --checkpoint PATH or put the model in the HF cache.",
                  file=sys.stderr)
            model = GPT2.from_state_dict(cfg, random_state_dict(cfg, args.weights_seed))
    cfg = model.cfg
    if not 1 <= args.top_k <= cfg.vocab_size:
        raise UsageError(f"top-k={args.top_k} must be an integer in 1..{cfg.vocab_size} (the vocabulary)")
    enc = gpt2_encoding()
    ids = enc.encode(prompt, allowed_special={"<|endoftext|>"})
    if len(ids) > cfg.n_ctx:
        raise UsageError(f"prompt is {len(ids)} tokens, longer than the context of {cfg.n_ctx} (n_ctx)")
    if max(ids) >= cfg.vocab_size:
        raise UsageError(f"token id {max(ids)} is outside the vocabulary of {cfg.vocab_size}")
    logits = model(torch.tensor([ids]))[0, -1]  # float32 (V,)
    order = torch.sort(logits, descending=True, stable=True).indices[:args.top_k].tolist()  # ties: lower id first
    print(f"{source} · float32 · cpu · reference (PyTorch)")
    print(f"prompt {prompt!r} -> ids {ids}")
    print(f"{'rank':>4}  {'logit':>9}  {'id':>6}  text")
    for r, i in enumerate(order, 1):
        print(f"{r:>4}  {float(logits[i]):9.2f}  {i:6d}  {enc.decode([i])!r}")
    nxt = int(logits.argmax())
    print(f"next token: {nxt} {enc.decode([nxt])!r}")
    print(prompt + enc.decode([nxt]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
