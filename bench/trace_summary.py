"""Summarise a Mosaic GPU profiler trace (``CompilerParams(profile_space=, profile_dir=)``, Perfetto JSON): per
named scope, the time each warpgroup spent inside it (mean over warpgroups that entered it, and the maximum), and
the span from the first to the last event. Used by session 11's skeleton experiment.

    python -m bench.trace_summary TRACE.json
"""

from __future__ import annotations

import collections
import json
import sys


def summarise(path: str) -> str:
    with open(path) as fh:
        events = json.load(fh)["traceEvents"]
    open_at: dict = {}
    per: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    first, last = float("inf"), float("-inf")
    for e in events:
        key = (e["tid"], e["name"])
        first, last = min(first, e["ts"]), max(last, e["ts"])
        if e["ph"] == "B":
            open_at[key] = e["ts"]
        elif key in open_at:
            per[e["name"]][e["tid"]] += e["ts"] - open_at.pop(key)
    lines = [f"{path}: span {last - first:.2f} us, {len(events)} events"]
    for name in sorted(per):
        v = list(per[name].values())
        lines.append(f"  {name:12s} warpgroups {len(v):4d}  mean {sum(v) / len(v):7.2f} us  max {max(v):7.2f} us")
    return "\n".join(lines)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(summarise(p))
