"""Issue 6's request-scoring figures: detection and false-positive rates per CRS category and paranoia
level on the OWASP Core Rule Set's regression tests (../shared/corpora/web_attacks/crs_regression.jsonl),
detection per category on the payload lists (payloads.jsonl, each payload sent as a query value), and the
time to score a request (p50 / p99), typical requests included. The gate reads no body (a route reads its
own, a model route's prompt is screened: bench/prompts.py): a case whose payload is only in its body is
scored as the gate sees it, without it, and the cases with a body are counted apart.

Targets: >= 95% of paranoia-level-1 attack cases detected, <= 1% of the CRS benign cases flagged, < 50 µs
for a typical request. The response-side CRS categories (95x, 980) inspect answers, not requests: left out.

    python bench/probes.py [--paranoia 1] [--threshold 5]

Writes bench/out/probes.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from floodwall.defense.scoring import Scorer, load_rules
from floodwall.inspection import Described

CORPORA = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora" / "web_attacks"
OUT = Path(__file__).with_name("out")
BROWSER = (("Host", "chat.example.com"), ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 "
            "Firefox/128.0"), ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
           ("Accept-Language", "en-GB,en;q=0.5"), ("Accept-Encoding", "gzip, deflate, br, zstd"),
           ("Referer", "https://chat.example.com/"))


def typical(n: int) -> list[Described]:
    """The traffic of an AI service's own users as the gate scores it (method, path, query, headers: a chat
    call's messages are prompt screening's, bench/prompts.py), each request with its own secrets (a session,
    a key), so that no answer kept from an earlier request serves it whole: a page of the web app, a chat
    call from the `openai` SDK, and a poll of the status JSON."""
    session, key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    return [
        Described("GET", f"/c/{n}", "", (*BROWSER, ("Cookie", f"fw_session={session}; fw_device={key[:22]}"))),
        Described("POST", "/v1/chat/completions", "", (
            ("Host", "api.example.com"), ("User-Agent", "OpenAI/Python 1.54.3"), ("Accept", "application/json"),
            ("Authorization", f"Bearer fw_{key}"), ("Content-Type", "application/json"),
            ("Content-Length", str(120 + n % 3000)))),
        Described("GET", "/api/v2/summary.json", f"page={n % 7}&sort=name",
                  (("Host", "status.example.com"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*"))),
    ]


def read(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (CORPORA / name).read_text().split("\n") if line.strip()]


def described(case: dict[str, Any]) -> Described:
    parts = urlsplit(case["uri"] or "/")
    headers = tuple((str(k), str(v)) for k, v in (case.get("headers") or {}).items())
    return Described(str(case.get("method") or "GET"), parts.path or "/", parts.query, headers)


def request_key(case: dict[str, Any]) -> str:
    """A case's request as sent (method, URI, headers, body): the same request may be a case of each label."""
    return json.dumps([case["method"], case["uri"], case.get("headers"), case.get("data")], sort_keys=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paranoia", type=int, default=1)
    parser.add_argument("--threshold", type=int, default=5)
    parser.add_argument("--show-missed", default="", help="print missed attack cases of this category")
    args = parser.parse_args()
    scorer = Scorer(load_rules(), args.paranoia, budget=1.0)  # the rules measured, not the time
    crs: dict[tuple[str, int, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    times: list[float] = []
    everything = read("crs_regression.jsonl")
    cases = [case for case in everything
             if case["label"] in ("attack", "benign") and not case["category"].startswith("RESPONSE")]
    # a benign case says one rule must not fire, not that the request is harmless: many are the very request
    # another test of the same suite requires flagged (contested); the rest are read apart as well
    attacks = {request_key(case) for case in everything if case["label"] == "attack"}
    contested: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0, 0])  # flagged, contested, all
    for case in cases:  # warm-up: RE2 builds each set's DFA lazily, as a long-running server will have
        scorer.score(described(case))
    for case in cases:
        request = described(case)
        scorer.forget_requests()  # the reading is timed, not the lookup of a request seen before
        started = time.perf_counter()
        found = scorer.score(request)
        times.append(time.perf_counter() - started)
        flagged = found.score >= args.threshold
        cell = crs[(case["category"].split("-", 2)[2], case.get("paranoia_level") or 0, case["label"])]
        cell[0] += flagged
        cell[1] += 1
        if case["label"] == "benign":
            row = contested[case.get("paranoia_level") or 0]
            if request_key(case) in attacks:
                row[1] += 1
            else:
                row[0] += flagged
                row[2] += 1
        if not flagged and case["label"] == "attack" and args.show_missed and args.show_missed in case["category"] \
                and (case.get("paranoia_level") or 0) <= args.paranoia:
            print("MISSED", case["rule_id"], request.method, request.path, request.query[:80],
                  repr(str(case.get("data") or "")[:120]),
                  [h for h in request.headers if h[0] not in ("Host", "Accept")][:3])
    bodied = [case for case in cases if case["label"] == "attack" and case.get("data")]
    missed_bodied = sum(scorer.score(described(case)).score < args.threshold for case in bodied)
    print(f"attack cases with a body (not read by the gate): {len(bodied)}, of which {missed_bodied} not flagged "
          "from the rest of the request")
    bodiless = [case for case in cases if case["label"] == "attack" and not case.get("data")
                and (case.get("paranoia_level") or 0) <= args.paranoia]
    caught = sum(scorer.score(described(case)).score >= args.threshold for case in bodiless)
    print(f"attack cases up to paranoia {args.paranoia} with no body (all they carry is read): {caught} / "
          f"{len(bodiless)} ({caught / max(1, len(bodiless)):.1%})")
    print("| CRS category | paranoia | attacks detected | benign flagged |\n|---|---:|---:|---:|")
    totals: dict[tuple[int, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    for category in sorted({k[0] for k in crs}):
        for level in sorted({k[1] for k in crs if k[0] == category}):
            attack, benign = crs.get((category, level, "attack"), [0, 0]), crs.get((category, level, "benign"), [0, 0])
            totals[(level, "attack")][0] += attack[0]
            totals[(level, "attack")][1] += attack[1]
            totals[(level, "benign")][0] += benign[0]
            totals[(level, "benign")][1] += benign[1]
            print(f"| {category} | {level} | {attack[0]} / {attack[1]} | {benign[0]} / {benign[1]} |")
    summary: dict[str, Any] = {}
    for level in sorted({k[0] for k in totals}):
        attack, benign = totals[(level, "attack")], totals[(level, "benign")]
        flagged, disputed, plain = contested[level]
        summary[f"pl{level}"] = {"detected": attack, "benign_flagged": benign,
                                 "uncontested_benign_flagged": [flagged, plain]}
        print(f"paranoia {level}: attacks detected {attack[0]} / {attack[1]} ({attack[0] / max(1, attack[1]):.1%}); "
              f"benign flagged {benign[0]} / {benign[1]} ({benign[0] / max(1, benign[1]):.1%}); "
              f"{disputed} benign cases are also attack cases, of the other {plain} flagged {flagged} "
              f"({flagged / max(1, plain):.1%})")
    payloads: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for row in read("payloads.jsonl"):
        found = scorer.score(Described("GET", "/search", "q=" + quote(row["payload"], safe="")))
        payloads[row["category"]][0] += found.score >= args.threshold
        payloads[row["category"]][1] += 1
    ranked = sorted(payloads.items(), key=lambda item: -item[1][1])
    print("\npayload lists, each sent as ?q=: " + ", ".join(f"{name} {hit / count:.0%} of {count}"
                                                            for name, (hit, count) in ranked))
    typical_times = []
    for n in range(2000):
        for request in typical(n):
            scorer.forget_requests()
            started = time.perf_counter()
            scorer.score(request)
            typical_times.append(time.perf_counter() - started)
    usual = {"p50": percentile(typical_times, 0.5) * 1e6, "p99": percentile(typical_times, 0.99) * 1e6}
    print(f"\ntime per request: CRS cases p50 {percentile(times, 0.5) * 1e6:.0f} µs, p99 "
          f"{percentile(times, 0.99) * 1e6:.0f} µs; typical requests p50 {usual['p50']:.1f} µs, "
          f"p99 {usual['p99']:.1f} µs")
    OUT.mkdir(exist_ok=True)
    (OUT / "probes.json").write_text(json.dumps({
        "paranoia": args.paranoia, "threshold": args.threshold, "crs": summary,
        "cells": {f"{c}/{lv}/{lb}": v for (c, lv, lb), v in crs.items()}, "payloads": payloads,
        "attacks_with_a_body_missed": [missed_bodied, len(bodied)], "bodiless_detected": [caught, len(bodiless)],
        "typical_us": usual}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
