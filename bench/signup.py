"""Issue 5's figures: sign-ups and sign-ins under attack, at each defense level, in one command.

For each level (pinned through the admin API, as an operator or the detector would set it) and each of the
simulator's `signup-bots`, `flash-crowd` and `stuffing` scenarios, a fresh floodwall (default policy,
memory state, SQLite) in front of the simulated model takes the attack; the table gives:

  bot accounts created per attempt, the challenges the bots solved and the CPU that cost them,
  the share of a flash crowd (200 people, arriving over the first half of the attack, patience 2 min)
  that registered and how long they waited, takeovers (of the leaked pairs, one right password for each
  of 130 victims, the share that signed in; and sign-ins with a wrong password), and the owners' own
  sign-ins during the stuffing wave, from the browsers they signed up with: 5 each on a network of their
  own, 25 behind one shared /24.

    python bench/signup.py [--duration 90] [--levels normal,elevated,under_attack]
                           [--scenarios signup-bots,flash-crowd,stuffing]

Writes bench/out/signup.json. Traffic only goes to loopback addresses, and each run is bounded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import pin_level
from defense import OUT, attack, established_keys, serving

SCENARIOS = ("signup-bots", "flash-crowd", "stuffing")
LEVELS = ("normal", "elevated", "under_attack")


def run(level: str, scenario: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    tmp = root / f"{level}-{scenario}"
    tmp.mkdir()
    with serving(tmp) as base:
        keys = established_keys(base, tmp)  # made at the normal level, before the attack
        pin_level(base, level, "bench/signup.py")
        options = argparse.Namespace(**{**vars(args), "scenario": scenario})
        return attack(base, options, tmp, f"{level}-{scenario}", keys)


def cell(reports: dict[str, dict[str, Any]], level: str, scenario: str, pick: Any) -> str:
    report = reports.get(f"{level}/{scenario}")
    if report is None:
        return "-"
    try:
        return str(pick(report["attackers"]))
    except (KeyError, TypeError):
        return "-"


def table(reports: dict[str, dict[str, Any]], levels: list[str]) -> str:
    def share(a: Any, b: Any) -> str:
        return f"{a} / {b} ({100 * a / b:.1f}%)" if b else f"{a} / {b}"

    rows = [
        ("bot accounts created / attempts", "signup-bots",
         lambda a: share(a["bot_accounts_created"], a["bot_signup_attempts"])),
        ("bot challenges solved (CPU s)", "signup-bots",
         lambda a: f"{a['bot_challenges_solved']} ({a['bot_pow_cpu_s']})"),
        ("flash crowd registered / people", "flash-crowd",
         lambda a: share(a["flash_crowd_registered"], a["flash_crowd_people"])),
        ("flash crowd wait s p50 / p95", "flash-crowd",
         lambda a: f"{a['flash_crowd_wait_s']['p50']} / {a['flash_crowd_wait_s']['p95']}"),
        ("takeovers / leaked pairs", "stuffing",
         lambda a: share(a["takeovers_with_leaked_password"], a["stuffing_leaked_pairs"])),
        ("sign-ins with a wrong password", "stuffing", lambda a: a["logins_with_wrong_password"]),
        ("stuffing attempts", "stuffing", lambda a: a["stuffing_attempts"]),
        ("owners on their own networks: sign-ins ok / tried", "stuffing",
         lambda a: share(a["owner_logins_by_network"]["own"]["ok"], a["owner_logins_by_network"]["own"]["tried"])),
        ("owners behind one shared /24: sign-ins ok / tried", "stuffing",
         lambda a: share(a["owner_logins_by_network"]["shared"]["ok"],
                         a["owner_logins_by_network"]["shared"]["tried"])),
        ("owners' sign-in p95 ms", "stuffing", lambda a: a["owner_login_p95_ms"]),
    ]
    lines = ["| | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for label, scenario, pick in rows:
        lines.append(f"| {label} | " + " | ".join(cell(reports, lv, scenario, pick) for lv in levels) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=90)
    parser.add_argument("--calm", type=float, default=5)
    parser.add_argument("--recovery", type=float, default=5)
    parser.add_argument("--sources", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="fw-signup-"))
    levels = args.levels.split(",")
    reports = {f"{level}/{scenario}": run(level, scenario, args, root)
               for level in levels for scenario in args.scenarios.split(",")}
    print(table(reports, levels))
    (OUT / "signup.json").write_text(json.dumps({"args": vars(args), "reports": reports}, indent=2))
    print(f"\nwrote {OUT / 'signup.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
