"""Issue 6's detector figures: how fast the level moves by itself (auto) when an attack starts and ends.

For each of the simulator's scenarios, a fresh floodwall (default policy, level `auto`, memory state, SQLite)
in front of the simulated model: established users alone for `--calm` seconds (the detector warms up and
learns them), the attack for `--duration`, users alone again for `--recovery`. The simulator reads the
level every second through the admin API; the table gives, per scenario:

  the levels the service went through, the seconds from the attack's start to the highest level, from the
  attack's end back to normal, the moves before the attack (false alarms) and during it (flapping), and
  the detector's reason for its first move (from the level history).

Targets (issue 6): a flood reaches under_attack within 5 s of its start and normal within 60 s of its end;
a flash crowd of real people is queued (elevated), never shed (under_attack); nothing moves while calm.

    python bench/detector.py [--scenarios flood,flash-crowd,signup-bots,stuffing] [--duration 30]

Writes bench/out/detector.json. Traffic only goes to loopback addresses, and each run is bounded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from defense import ADMIN_TOKEN, OUT, attack, established_keys, serving
from floodwall.levels import rank

SCENARIOS = ("flood", "flash-crowd", "signup-bots", "stuffing")


def run(scenario: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    tmp = root / scenario
    tmp.mkdir()
    with serving(tmp) as base:
        keys = established_keys(base, tmp)
        options = argparse.Namespace(**{**vars(args), "scenario": scenario})
        report = attack(base, options, tmp, f"detector-{scenario}", keys)
        history = httpx.get(f"{base}/admin/api/level", headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                            timeout=10).json()["history"]
    return {"report": report, "history": list(reversed(history)), **timeline(report, args)}


def timeline(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The level's moves against the attack's start and end (the simulator's clock, read each second)."""
    start, end = args.calm, args.calm + args.duration
    moves = [(float(at), level) for at, level in report["service"]["levels"]][1:]  # the first is the start
    during = [(at, level) for at, level in moves if start <= at < end]
    highest = max((level for _, level in during), key=rank, default="normal")
    reached = next((at - start for at, level in during if level == highest), None) if during else None
    back = next((at - end for at, level in moves if at >= end and level == "normal"), None)
    return {"levels": [level for _, level in moves], "highest": highest,
            "to_highest_s": None if reached is None else round(reached, 1),
            "back_to_normal_s": None if back is None else round(back, 1),
            "false_alarms": sum(1 for at, _ in moves if at < start),
            "moves_during": len(during), "moves": moves}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| scenario | levels it went through | highest | s to highest | s back to normal after | "
             "moves before / during | first reason |", "|---|---|---|---|---|---|---|"]
    for name, found in results.items():
        reason = next((str(h.get("reason", "")) for h in found["history"] if h.get("by") == "detector"), "-")
        lines.append(f"| {name} | {' → '.join(['normal', *found['levels']])} | {found['highest']} | "
                     f"{found['to_highest_s'] if found['to_highest_s'] is not None else '-'} | "
                     f"{found['back_to_normal_s'] if found['back_to_normal_s'] is not None else '-'} | "
                     f"{found['false_alarms']} / {found['moves_during']} | {reason[:110]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--calm", type=float, default=45, help="users alone first: the detector's warm-up is 30s")
    parser.add_argument("--recovery", type=float, default=75)
    parser.add_argument("--sources", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="fw-detector-"))
    results = {scenario: run(scenario, args, root) for scenario in args.scenarios.split(",")}
    print(table(results))
    summary = {name: {k: v for k, v in found.items() if k != "report"} for name, found in results.items()}
    (OUT / "detector.json").write_text(json.dumps({"args": vars(args), "results": summary}, indent=2))
    print(f"\nwrote {OUT / 'detector.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
