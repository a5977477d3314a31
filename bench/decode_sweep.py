"""Decode-sized projections at HBM speed: ``pallas_kernels.autotune.sweep_decode`` with its full results (GPU).

    python -m bench.decode_sweep --model gpt2-xl --rows 1 --formats bf16,int8,int4 --out sweep.json [--table T.json]

Each candidate split-K config of the four projections runs over distinct weight copies that do not fit in L2 (see
the autotune module); the best eight per shape go to ``--out`` as JSON after every shape, and ``--table`` merges each
shape's winner into a tuning table (``pallas_kernels/tuning_tables/<gpu>.json`` is what ``tuning.lookup`` reads).
"""

from __future__ import annotations

import argparse
import json

from bench.timing import require_gpu
from pallas_kernels import tuning
from pallas_kernels.autotune import sweep_decode, sweep_winners


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.decode_sweep")
    ap.add_argument("--model", default="gpt2-xl")
    ap.add_argument("--rows", default="1")
    ap.add_argument("--formats", default="bf16,int8,int4")
    ap.add_argument("--max-configs", type=int, default=200)
    ap.add_argument("--out", default="decode_sweep.json")
    ap.add_argument("--table", default=None, help="merge each shape's winner into this tuning table")
    args = ap.parse_args(argv)
    require_gpu("bench.decode_sweep")
    log = lambda s: print(s, flush=True)  # noqa: E731
    results: dict = {}
    for model in args.model.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            for fmt in args.formats.split(","):
                res = sweep_decode(model, rows, fmt, args.max_configs, log)
                results[f"{model},m={rows},{fmt}"] = res
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
                if args.table:
                    tuning.merge_into_table(args.table, sweep_winners(res))


if __name__ == "__main__":
    main()
