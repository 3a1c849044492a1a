"""Issue 6's prompt-screening figures on ../shared/corpora/prompts/prompts_dev.jsonl: recall (attacks
flagged) and false-positive rate (ordinary prompts flagged) per category at the default threshold, and
the time per prompt (the rules and the campaign signature), p50 / p99 / max, against Python's re running
the same rules (the baseline RE2 replaces).

The rules were written while reading this set: its figures are development figures, not a held-out result.

    python bench/prompts.py [--corpus PATH] [--threshold 3]

Writes bench/out/prompts.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path

from floodwall.defense.prompts import Screen, load_rules, scanned, signature

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora" / "prompts" / "prompts_dev.jsonl"
OUT = Path(__file__).with_name("out")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--threshold", type=int, default=3)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.corpus).read_text().split("\n") if line.strip()]
    rules = load_rules()
    screen = Screen(rules)
    python_re = [re.compile(rule.pattern.pattern, re.IGNORECASE) for rule in rules]
    cells: dict[tuple[int, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    timings: dict[str, list[float]] = {"rules (RE2)": [], "campaign signature": [], "rules (Python re)": []}
    for row in rows:
        text = row["text"]
        started = time.perf_counter()
        verdict = screen.score(text)
        timings["rules (RE2)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        signature(text)
        timings["campaign signature"].append(time.perf_counter() - started)
        started = time.perf_counter()
        read = scanned(text)
        for pattern in python_re:
            pattern.search(read)
        timings["rules (Python re)"].append(time.perf_counter() - started)
        cell = cells[(row["label"], row["category"])]
        cell[0] += verdict.score >= args.threshold
        cell[1] += 1
    print(f"corpus {args.corpus}: {len(rows)} prompts; threshold {args.threshold}\n")
    print("| label | category | flagged / prompts | share |\n|---|---|---:|---:|")
    totals = {0: [0, 0], 1: [0, 0]}
    for (label, category), (flagged, count) in sorted(cells.items()):
        totals[label][0] += flagged
        totals[label][1] += count
        print(f"| {'attack' if label else 'ordinary'} | {category} | {flagged} / {count} | {flagged / count:.1%} |")
    recall = totals[1][0] / totals[1][1]
    false_positives = totals[0][0] / totals[0][1]
    print(f"\nrecall {totals[1][0]} / {totals[1][1]} = {recall:.1%}; false positives {totals[0][0]} / {totals[0][1]} "
          f"= {false_positives:.2%}\n")
    times = {}
    for name, values in timings.items():
        times[name] = {"p50_ms": round(percentile(values, 0.5) * 1e3, 3),
                       "p99_ms": round(percentile(values, 0.99) * 1e3, 3), "max_ms": round(max(values) * 1e3, 3)}
        print(f"{name:20s} p50 {times[name]['p50_ms']:.3f} ms  p99 {times[name]['p99_ms']:.3f} ms  "
              f"max {times[name]['max_ms']:.3f} ms")
    ratio = percentile(timings["rules (Python re)"], 0.99) / percentile(timings["rules (RE2)"], 0.99)
    print(f"\nPython re / RE2 at p99: {ratio:.1f}x")
    OUT.mkdir(exist_ok=True)
    (OUT / "prompts.json").write_text(json.dumps({
        "threshold": args.threshold, "recall": recall, "false_positive_rate": false_positives, "times": times,
        "cells": {f"{label}/{category}": value for (label, category), value in cells.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
