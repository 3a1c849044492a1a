"""Issue 8, item 4: the soak. Two floodwall processes sharing Redis and a fresh PostgreSQL database, in front
of the simulated model, take the simulator's `mixed` scenario (floods, sign-up bots, a flash crowd,
credential stuffing, probes, jailbreaks, and established users throughout) for `--minutes`, half the
traffic at each. Every `--every` seconds each process's own /metrics is read: resident memory, open files,
tasks on its event loop, event loop lag; and the established users' success and p95 latency per window
come from the simulators' reports. Printed over time, with the drift of each figure between the first
and the last third of the run (flat is the target: nothing that grows with time served).

    python bench/soak.py [--minutes 30] [--every 30] [--rate 150]

Needs Redis at 127.0.0.1:6379 and PostgreSQL at 127.0.0.1:5432 (trust auth). Writes bench/out/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from _common import account_key, process
from defense import ADMIN_TOKEN, OUT, model_command
from floodwall.config import SETTINGS_ENV, load
from floodwall.db.engine import upgrade
from floodwall.edge.policy import DEFAULT_POLICY
from floodwall.server import free_port
from hostile import SERVE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import postgres_database

FIGURES = {"rss_mb": r"^process_resident_memory_bytes (\S+)", "open_files": r"^process_open_fds (\S+)",
           "tasks": r"^floodwall_asyncio_tasks (\S+)", "loop_lag_ms": r"^floodwall_event_loop_lag_seconds (\S+)"}
HELD = re.compile(r'^floodwall_held_entries\{part="(\w+)"\} (\S+)$', re.M)
SCALE = {"rss_mb": 1 / 2**20, "open_files": 1, "tasks": 1, "loop_lag_ms": 1000}


def replica_env(url: str, upstream: str, tmp: Path) -> dict[str, str]:
    # the default policy, told the model server's slots (as bench/defense.py does)
    policy = DEFAULT_POLICY.read_text().replace("\nmin_limit = 1\n", "\nmin_limit = 8\n")
    (tmp / "policy.toml").write_text(policy)
    settings = load(environ={}, overrides={
        "database": {"url": url}, "log": {"level": "warning", "format": "json"}, "upstream": {"url": upstream},
        "admin": {"token": ADMIN_TOKEN}, "edge": {"policy": str(tmp / "policy.toml")},
        "state": {"url": f"redis://127.0.0.1:6379/0?prefix=fwsoak-{secrets.token_hex(4)}:"}})
    return {SETTINGS_ENV: settings.to_json()}


def read_figures(base: str) -> dict[str, Any]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found: dict[str, Any] = {}
    for name, pattern in FIGURES.items():
        match = re.search(pattern, text, re.M)
        if match:
            found[name] = round(float(match.group(1)) * SCALE[name], 2)
    # what each bounded memory holds: where a growth of the resident memory comes from
    held = {part: int(float(count)) for part, count in HELD.findall(text)}
    tracked = re.search(r"^floodwall_tracked_addresses (\S+)", text, re.M)
    if tracked:
        held["tracked_addresses"] = int(float(tracked.group(1)))
    found["held"] = held
    return found


def established(keys_file: Path, url: str, base: str, count: int = 8) -> None:
    """Accounts made before the run and backdated a month, so that floodwall counts them established."""
    keys = [account_key(base, f"member{i}@example.com", f"127.9.{i}.1") for i in range(count)]

    async def backdate() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("UPDATE users SET created_at = now() - interval '30 days' "
                                     "WHERE email LIKE 'member%'")
        finally:
            await connection.close()

    asyncio.run(backdate())
    keys_file.write_text("\n".join(keys) + "\n")


def windows(report: dict[str, Any], every: int) -> list[dict[str, float | None]]:
    """The established users' success rate and median per-second p95, per window of `every` seconds."""
    series = report["series"].get("established", {})
    success, p95 = series.get("success_rate", []), series.get("p95_ms", [])
    found = []
    for start in range(0, len(success), every):
        rates = [v for v in success[start:start + every] if v is not None]
        latencies = [v for v in p95[start:start + every] if v is not None]
        found.append({"success": round(statistics.mean(rates), 4) if rates else None,
                      "p95_ms": round(statistics.median(latencies), 1) if latencies else None})
    return found


def drift(values: list[float | None]) -> str:
    """The last third's median against the first third's."""
    known = [v for v in values if v is not None]
    third = max(1, len(known) // 3)
    first, last = statistics.median(known[:third]), statistics.median(known[-third:])
    return f"{first:g} -> {last:g}" + (f" ({last / first:.2f}x)" if first else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=int, default=30, help="seconds between samples")
    parser.add_argument("--rate", type=float, default=150.0, help="flood requests a second, per replica")
    args = parser.parse_args()
    seconds = int(args.minutes * 60)
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder, postgres_database() as url:
        tmp = Path(folder)
        upgrade(url)
        model_port, ports = free_port(), [free_port(), free_port()]
        command, model_env = model_command(model_port)
        upstream = f"http://127.0.0.1:{model_port}/v1"
        env = replica_env(url, upstream, tmp)
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        with process(command, model_env, f"http://127.0.0.1:{model_port}/health", tmp / "model.log"), \
                process([sys.executable, "-c", SERVE, str(ports[0])], env, f"{bases[0]}/healthz", tmp / "a.log"), \
                process([sys.executable, "-c", SERVE, str(ports[1])], env, f"{bases[1]}/healthz", tmp / "b.log"):
            established(tmp / "keys.txt", url, bases[0])
            simulators = [subprocess.Popen(
                [sys.executable, "-m", "floodwall", "attack", "mixed", "--target", base, "--quiet",
                 "--calm", "30", "--recovery", "30", "--duration", str(max(30, seconds - 60)),
                 "--rate", str(args.rate), "--sources", "2000", "--users", "8", "--keys", str(tmp / "keys.txt"),
                 "--admin-token", ADMIN_TOKEN, "--report", str(tmp / f"report-{n}.json")],
                stdout=subprocess.DEVNULL, stderr=(tmp / f"sim-{n}.log").open("wb")) for n, base in enumerate(bases)]
            started = time.monotonic()
            stop = threading.Event()
            while not stop.is_set() and any(s.poll() is None for s in simulators):
                at = round(time.monotonic() - started)
                row: dict[str, Any] = {"at_s": at}
                for name, base in zip("ab", bases, strict=True):
                    with contextlib.suppress(httpx.HTTPError):
                        row[name] = read_figures(base)
                samples.append(row)
                print(json.dumps(row), flush=True)
                stop.wait(args.every)
            for simulator in simulators:
                simulator.wait(600)
        reports = [json.loads((tmp / f"report-{n}.json").read_text()) for n in range(2)]
    users = [windows(report, args.every) for report in reports]
    OUT.mkdir(exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps({"samples": samples, "users": users,
                                               "established": [r["established"] for r in reports]}, indent=2))
    print("\n| minute | " + " | ".join(f"{replica} {name}" for replica in "ab" for name in FIGURES) + " |")
    print("|---:|" + "---:|" * (2 * len(FIGURES)))
    for row in samples:
        cells = [str(row.get(replica, {}).get(name, "-")) for replica in "ab" for name in FIGURES]
        print(f"| {row['at_s'] / 60:.1f} | " + " | ".join(cells) + " |")
    print("\ndrift, first third -> last third (median):")
    for replica in "ab":
        for name in FIGURES:
            print(f"  {replica} {name}: {drift([row.get(replica, {}).get(name) for row in samples])}")
    for replica in "ab":
        parts = sorted({part for row in samples for part in row.get(replica, {}).get("held", {})})
        print(f"\nentries held at {replica} (every bounded memory: caches, signatures, limits):")
        print("| minute | " + " | ".join(parts) + " |\n|---:|" + "---:|" * len(parts))
        for row in samples[::max(1, len(samples) // 12)] + samples[-1:]:
            held = row.get(replica, {}).get("held", {})
            print(f"| {row['at_s'] / 60:.1f} | " + " | ".join(str(held.get(part, "-")) for part in parts) + " |")
    for n, windowed in enumerate(users):
        print(f"  established users at {'ab'[n]}: success {drift([w['success'] for w in windowed])}, "
              f"p95 ms {drift([w['p95_ms'] for w in windowed])}")
    for n, report in enumerate(reports):
        print(f"  {'ab'[n]} whole run, established: {json.dumps(report['established'])[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
