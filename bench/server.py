"""Which ASGI server floodwall runs on, and what floodwall adds in front of a model server.

One run, one machine, every figure measured against its baseline in the same run:
  - throughput at saturation (wrk, 64 connections): /healthz and a proxied chat completion, on granian and
    on uvicorn (uvloop + httptools), one worker each, and the simulated model called directly;
  - added latency at a fixed offered load below saturation (wrk with a per-request think time, so the
    offered rate is about connections / think time): floodwall on each server against the model directly.

    python bench/server.py [--duration 10] [--connections 64] [--rate 500]

Needs wrk (Debian: apt install wrk). Prints a table and writes bench/out/server.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _common import account_key, process, write_lua, wrk
from floodwall.config import SETTINGS_ENV, load
from floodwall.server import free_port

OUT = Path(__file__).with_name("out")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=500, help="offered load for the latency runs, requests/s")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    script = write_lua(tmp)
    delay_ms = max(1, round(args.connections * 1000 / args.rate))
    results: dict[str, dict[str, float]] = {}

    model_port = free_port()
    model_url = f"http://127.0.0.1:{model_port}"
    # a model fast enough that the gateway, not the model, is what is measured
    model_settings = load(environ={}, overrides={"model": {
        "slots": 4096, "queue_size": 4096, "tokens_per_second": 100000, "reply_tokens": 8, "first_token_delay": 0}})
    database = f"sqlite:///{tmp / 'bench.db'}"
    # no limit rules: this compares servers on the same work, not the edge's refusals (bench/edge.py does those)
    (tmp / "no-limits.toml").write_text("# no rules, no budgets\n")
    settings = load(environ={}, overrides={"upstream": {"url": model_url + "/v1"}, "database": {"url": database},
                                           "log": {"level": "warning", "format": "json"},
                                           "edge": {"policy": str(tmp / "no-limits.toml")}})
    from floodwall.db.engine import upgrade

    upgrade(database)
    engines = {
        "granian": [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--workers", "1",
                    "--backlog", "2048", "--no-ws", "--log-level", "warning"],
        "uvicorn": [sys.executable, "-m", "uvicorn", "--factory", "--workers", "1", "--loop", "uvloop",
                    "--http", "httptools", "--no-access-log", "--log-level", "warning", "--backlog", "2048"],
    }
    model_cmd = [*engines["granian"], "--port", str(model_port), "floodwall.sim.model:app_from_env"]
    with process(model_cmd, {SETTINGS_ENV: model_settings.to_json()}, f"{model_url}/health", tmp / "model.log"):
        results["model direct: chat"] = wrk(f"{model_url}/v1/chat/completions", script, args.duration,
                                            args.connections, method="POST")
        results["model direct: chat, paced"] = wrk(f"{model_url}/v1/chat/completions", script, args.duration,
                                                   args.connections, method="POST", delay_ms=delay_ms)
        key = ""
        for engine, command in engines.items():
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            cmd = [*command, "--port", str(port), "floodwall.app:app_from_env"]
            with process(cmd, {SETTINGS_ENV: settings.to_json()}, f"{base}/healthz", tmp / f"{engine}.log"):
                if not key:
                    key = account_key(base)
                results[f"{engine}: healthz"] = wrk(f"{base}/healthz", script, args.duration, args.connections)
                results[f"{engine}: 404"] = wrk(f"{base}/nothing-here", script, args.duration, args.connections)
                results[f"{engine}: chat"] = wrk(f"{base}/v1/chat/completions", script, args.duration,
                                                 args.connections, method="POST", key=key)
                results[f"{engine}: chat, paced"] = wrk(f"{base}/v1/chat/completions", script, args.duration,
                                                        args.connections, method="POST", key=key, delay_ms=delay_ms)
    report(results, args, delay_ms)
    OUT.mkdir(exist_ok=True)
    (OUT / "server.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


def report(results: dict[str, dict[str, float]], args: argparse.Namespace, delay_ms: int) -> None:
    cores = os.cpu_count()
    print(f"\n{cores} cores; wrk -t2 -c{args.connections} -d{args.duration}s; paced runs: {delay_ms} ms think time "
          f"per connection (about {args.connections * 1000 // delay_ms} req/s offered)\n")
    print(f"{'run':<30} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, r in results.items():
        print(f"{name:<30} {r['rps']:>9.0f} {r.get('p50_ms', 0):>8.2f} {r.get('p90_ms', 0):>8.2f} "
              f"{r.get('p99_ms', 0):>8.2f} {r['non_2xx']:>8.0f}")
    direct = results["model direct: chat, paced"]
    print("\nratios (same run):")
    for engine in ("granian", "uvicorn"):
        paced = results[f"{engine}: chat, paced"]
        print(f"  {engine}: healthz {results[f'{engine}: healthz']['rps']:.0f} req/s; proxied chat at saturation "
              f"{results[f'{engine}: chat']['rps'] / results['model direct: chat']['rps']:.2f}x the model direct; "
              f"added latency at {args.rate} req/s: p50 +{paced['p50_ms'] - direct['p50_ms']:.2f} ms, "
              f"p99 +{paced['p99_ms'] - direct['p99_ms']:.2f} ms")
    g, u = results["granian: healthz"]["rps"], results["uvicorn: healthz"]["rps"]
    print(f"  granian / uvicorn: healthz {g / u:.2f}x, 404 "
          f"{results['granian: 404']['rps'] / results['uvicorn: 404']['rps']:.2f}x, proxied chat "
          f"{results['granian: chat']['rps'] / results['uvicorn: chat']['rps']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
