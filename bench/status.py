"""Issue 7's status-page figure: the page and its JSON are served from memory, so they stay fast while the
service is flooded. One run, one floodwall (1 worker, SQLite, no limit rules so that wrk's one address is not
rationed), 20 incidents of 5 updates each in the database, then with wrk (64 connections):

- throughput of /healthz (the cheapest route behind the gate: the floor), /status, /api/v2/summary.json
  and, for contrast, /admin/api/incidents (the same incidents read from the database per request);
- /status latency at a modest paced load (8 connections, about 200 a second) alone, then while 64 other
  connections flood /login (a page): the ratio is what a flood costs a status reader.

    python bench/status.py [--duration 10]

Needs wrk (apt install wrk). Writes bench/out/status.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx

from _common import process, write_lua, wrk
from defense import GRANIAN, model_command
from floodwall.config import SETTINGS_ENV, load
from floodwall.db.engine import upgrade
from floodwall.server import free_port

OUT = Path(__file__).with_name("out")
TOKEN = "bench-admin-token-0123456789-abcdefgh"


def seed(base: str) -> None:
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as admin:
        for n in range(20):
            made = admin.post("/admin/api/incidents", json={
                "name": f"Incident {n}: slow answers from the model", "impact": "minor",
                "body": "We are looking into slow answers from the model. " * 4,
                "components": {"model": "degraded_performance"}})
            made.raise_for_status()
            for status in ("identified", "monitoring", "monitoring", "resolved"):
                admin.post(f"/admin/api/incidents/{made.json()['id']}/updates",
                           json={"status": status, "body": "An update on the incident, as operators write them."})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        script = write_lua(tmp)
        (tmp / "policy.toml").write_text("# no limit rules: the benchmark's one address must not be rationed\n")
        model_port, port = free_port(), free_port()
        settings = load(environ={}, overrides={
            "database": {"url": f"sqlite:///{tmp / 'status.db'}"}, "log": {"level": "warning", "format": "json"},
            "upstream": {"url": f"http://127.0.0.1:{model_port}/v1"}, "admin": {"token": TOKEN},
            "edge": {"policy": str(tmp / "policy.toml")}, "status": {"refresh_interval": 1.0}})
        upgrade(settings.database.url)
        base = f"http://127.0.0.1:{port}"
        command, env = model_command(model_port)
        with process(command, env, f"http://127.0.0.1:{model_port}/health", tmp / "model.log"), \
                process([*GRANIAN, "--factory", "--port", str(port), "floodwall.app:app_from_env"],
                        {SETTINGS_ENV: settings.to_json()}, f"{base}/healthz", tmp / "floodwall.log"):
            seed(base)
            httpx.get(f"{base}/status")  # the board has read the incidents by now (1 s refresh)
            sizes = {encoding: int(httpx.get(f"{base}/status", headers={"accept-encoding": encoding})
                                   .headers["content-length"]) for encoding in ("identity", "gzip")}
            print(f"/status is {sizes['identity']:,} bytes, {sizes['gzip']:,} gzipped", flush=True)
            figures["status_bytes"] = sizes
            for name, path, encoding in (
                    ("healthz", "/healthz", ""), ("status", "/status", ""), ("status_gzip", "/status", "gzip"),
                    ("summary", "/api/v2/summary.json", ""), ("incidents_from_database", "/admin/api/incidents", "")):
                figures[name] = wrk(base + path, script, args.duration, 64, key=TOKEN if "admin" in path else "",
                                    accept_encoding=encoding)
                print(f"{name:<24} {figures[name]['rps']:>9,.0f} req/s  p50 {figures[name]['p50_ms']:.2f} ms  "
                      f"p99 {figures[name]['p99_ms']:.2f} ms", flush=True)
            figures["status_paced_calm"] = wrk(f"{base}/status", script, args.duration, 8, delay_ms=40,
                                               accept_encoding="gzip")
            flood: dict[str, Any] = {}
            flooding = threading.Thread(target=lambda: flood.update(
                wrk(f"{base}/login", script, args.duration + 2, 64)))
            flooding.start()
            figures["status_paced_flood"] = wrk(f"{base}/status", script, args.duration, 8, delay_ms=40,
                                                accept_encoding="gzip")
            flooding.join()
            figures["flood"] = flood
    floor = figures["healthz"]["rps"]
    calm, flooded = figures["status_paced_calm"], figures["status_paced_flood"]
    print(f"\n/status throughput {figures['status']['rps'] / floor:.2f}x of /healthz "
          f"({figures['status_gzip']['rps'] / floor:.2f}x gzipped), summary.json "
          f"{figures['summary']['rps'] / floor:.2f}x; incidents read from the database per request "
          f"{figures['incidents_from_database']['rps'] / floor:.2f}x")
    print(f"/status at ~{calm['rps']:.0f} req/s: p50 {calm['p50_ms']:.2f} ms p99 {calm['p99_ms']:.2f} ms calm; "
          f"p50 {flooded['p50_ms']:.2f} ms p99 {flooded['p99_ms']:.2f} ms while /login takes "
          f"{figures['flood']['rps']:,.0f} req/s ({flooded['p99_ms'] / max(calm['p99_ms'], 1e-9):.2f}x p99)")
    OUT.mkdir(exist_ok=True)
    (OUT / "status.json").write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
