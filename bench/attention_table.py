"""Summarise ``bench.attention_sweep`` JSON files: per shape, each variant's best config and the peers (µs, TF/s).

    python -m bench.attention_table sweep1.json [sweep2.json ...]

A variant is a sweep label without its ``kv.. s.. order`` config; its best config is the fastest whose output's
max |error| against the float32 reference is under 0.05 (bf16 inputs); a config over it is flagged, never ranked.
"""

from __future__ import annotations

import json
import sys

TOL = 0.05


def summarise(paths: list[str]) -> list[dict]:
    rows: dict[str, dict] = {}
    for path in paths:
        with open(path) as fh:
            for row in json.load(fh)["rows"]:
                rows.setdefault(row["case"], {"flops": row["flops"], "impls": {}})["impls"].update(row["impls"])
    out = []
    for case, row in rows.items():
        best: dict[str, tuple[float, str]] = {}
        bad = []
        for name, r in row["impls"].items():
            if "us" not in r:
                bad.append(f"{name}: {r.get('error', '?')[:60]}")
                continue
            if r["max_err"] > TOL or r["max_err"] != r["max_err"]:
                bad.append(f"{name}: max_err {r['max_err']:.3g}")
                continue
            parts = name.split()
            variant, cfg = (" ".join(["mosaic"] + parts[4:]), " ".join(parts[1:3])) if parts[0] == "mosaic" \
                else (name, "")
            if variant not in best or r["us"] < best[variant][0]:
                best[variant] = (r["us"], cfg)
        out.append({"case": case, "flops": row["flops"], "best": best, "bad": bad})
    return out


def main(argv=None):
    paths = sys.argv[1:] if argv is None else argv
    for row in summarise(paths):
        print(f"{row['case']}:")
        for variant, (us, cfg) in sorted(row["best"].items(), key=lambda kv: kv[1][0]):
            print(f"  {us:8.1f} us {row['flops'] / (us * 1e-6) / 1e12:6.1f} TF/s  {variant} {cfg}")
        for b in row["bad"]:
            print(f"  !! {b}")


if __name__ == "__main__":
    main()
