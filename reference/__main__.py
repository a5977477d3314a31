"""``python -m reference predict "Dobby is" [--checkpoint PATH]``: the oracle's own top-k table."""

import argparse
import sys

import torch

from reference.model import SIZES, GPT2, GPT2Config, load_gpt2
from reference.tokens import gpt2_encoding


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="top-k next tokens of a prompt")
    p.add_argument("prompt")
    p.add_argument("--checkpoint", help="HF model directory or weights file")
    p.add_argument("--model", default="gpt2", choices=sorted(SIZES), help="shape for random weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=10)
    args = ap.parse_args(argv)
    enc = gpt2_encoding()
    ids = enc.encode(args.prompt, allowed_special={"<|endoftext|>"})
    if not ids:
        print("error: empty prompt", file=sys.stderr)
        return 2
    if args.checkpoint:
        model = load_gpt2(args.checkpoint)
        source = args.checkpoint
    else:
        torch.manual_seed(args.seed)
        model = GPT2(GPT2Config(*SIZES[args.model]))
        for prm in model.parameters():
            torch.nn.init.normal_(prm, std=0.02)
        source = f"random {args.model} (torch seed {args.seed}; meaningless output)"
        print(f"warning: {source}", file=sys.stderr)
    logits = model(torch.tensor([ids]))[0, -1]
    top = torch.topk(logits, args.top_k)
    print(f"reference GPT-2 · {source} · prompt {args.prompt!r} · ids {ids}")
    print(f"{'logit':>9}  {'id':>6}  text")
    for value, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{value:9.2f}  {i:6d}  {enc.decode([i])!r}")
    nxt = int(logits.argmax())
    print(f"next token: {nxt} {enc.decode([nxt])!r}")
    print(args.prompt + enc.decode([nxt]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
