"""The edge's benchmarks (issue 3), each against a baseline measured in the same run:

  rejection   floodwall refusing a flood (429 from a limit rule) against a bare ASGI app returning the same
              429 on the same server (granian, one worker): target >= 80% of that floor
  latency     an admitted chat call through floodwall (edge + admission) against the model directly, at
              fixed offered loads (64 connections, each pausing an exponentially distributed time between
              calls), beside a bare relay on the same server and client (bare_relay.py) that shows what
              the hop itself costs: target, floodwall's added latency <= 1.5x the relay's, p50 and p99
  memory      the memory Store holding 1,000,000 distinct client addresses through the default policy:
              target <= 100 MB, and bounded beyond (max_keys)
  redis       round trips per decision (Redis's own command count) and the accuracy of one global limit
              enforced by two floodwall processes sharing Redis: targets 1, and within 2%
  saturation  the simulated model at 8 slots; new accounts and anonymous clients flooding at 50x its
              capacity; established users' success rate (>= 99.9%) and p95 against their p95 alone (<= 1.5x)

    python bench/edge.py [--only rejection,latency,memory,redis,saturation] [--duration 6] [--runs 3]
                         [--rates 100,500]

Needs wrk (apt install wrk) and Redis at 127.0.0.1:6379 for the redis part. Writes bench/out/edge.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from _common import GRANIAN, account_key, fast_model_env, process, write_lua, wrk
from floodwall.config import SETTINGS_ENV, load
from floodwall.edge.policy import DEFAULT_POLICY
from floodwall.limits import Caller
from floodwall.policy import PolicyFile
from floodwall.server import free_port
from floodwall.state.memory import MemoryStore

OUT = Path(__file__).with_name("out")
# the floor of the learnt model concurrency in the saturation run: 1 by default (the limiter learns on its
# own); BENCH_MIN_LIMIT=8 is what an operator who knows the model server's slots would set
MIN_LIMIT = int(os.environ.get("BENCH_MIN_LIMIT", "1"))
FLOOD_POLICY = '[[rule]]\nname = "flood/ip"\nclasses = ["page"]\nkey = "ip"\nnormal = "1/1h burst 1"\n'
GLOBAL_POLICY = '[[rule]]\nname = "bench/global"\nclasses = ["status"]\nkey = "global"\nnormal = "3000/1m burst 100"\n'


def floodwall_cmd(port: int) -> list[str]:
    return [*GRANIAN, "--factory", "--port", str(port), "floodwall.app:app_from_env"]


def settings_env(tmp: Path, **sections: dict[str, Any]) -> dict[str, str]:
    base = {"database": {"url": f"sqlite:///{tmp / 'bench.db'}"}, "log": {"level": "warning", "format": "json"},
            "defense": {"level": "normal", "new_account_age": 0}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    from floodwall.db.engine import upgrade

    settings = load(environ={}, overrides=base)
    upgrade(settings.database.url)
    return {SETTINGS_ENV: settings.to_json()}


def latency_policy() -> str:
    """The default rules, with budgets no benchmark client reaches: what the latency is measured with is the
    machinery, not a limit."""
    policy = DEFAULT_POLICY.read_text().replace("established = 200000", "established = 1000000000")
    policy = policy.replace('"120/1m burst 30"', '"1000000/1m burst 100000"')
    return policy.replace("in_flight = { established = 16,", "in_flight = { established = 100000,")


def rejection(tmp: Path, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    (tmp / "flood.toml").write_text(FLOOD_POLICY)
    bare_port, fw_port = free_port(), free_port()
    bare = [*GRANIAN, "--port", str(bare_port), "bare429:app"]
    env = settings_env(tmp, edge={"policy": str(tmp / "flood.toml")}, upstream={"url": "http://127.0.0.1:9/v1"})
    floors, edges = [], []
    with process(bare, {"PYTHONPATH": str(Path(__file__).parent)}, f"http://127.0.0.1:{bare_port}/x",
                 tmp / "bare.log", expect=429), \
            process(floodwall_cmd(fw_port), env, f"http://127.0.0.1:{fw_port}/healthz", tmp / "fw-reject.log"):
        for _ in range(args.runs):  # interleaved: the machine's noise falls on both alike
            floors.append(wrk(f"http://127.0.0.1:{bare_port}/x", script, args.duration, 64)["rps"])
            edges.append(wrk(f"http://127.0.0.1:{fw_port}/x", script, args.duration, 64)["rps"])
    ratios = [e / f for e, f in zip(edges, floors, strict=True)]
    return {"bare_429_rps": floors, "floodwall_429_rps": edges, "ratio_median": statistics.median(ratios),
            "target": ">= 0.80"}


def latency(tmp: Path, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    model_port, relay_port, fw_port = free_port(), free_port(), free_port()
    model_env = fast_model_env()
    (tmp / "latency.toml").write_text(latency_policy())
    upstream = f"http://127.0.0.1:{model_port}/v1"
    env = settings_env(tmp, edge={"policy": str(tmp / "latency.toml")}, upstream={"url": upstream})
    model_cmd = [*GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"]
    relay_cmd = [*GRANIAN, "--port", str(relay_port), "bare_relay:app"]
    relay_env = {"PYTHONPATH": str(Path(__file__).parent), "BENCH_UPSTREAM": upstream}
    chat = "/v1/chat/completions"
    results: dict[str, Any] = {}
    with process(model_cmd, model_env, f"http://127.0.0.1:{model_port}/health", tmp / "model.log"), \
            process(relay_cmd, relay_env, f"http://127.0.0.1:{relay_port}/health", tmp / "relay.log", expect=404), \
            process(floodwall_cmd(fw_port), env, f"http://127.0.0.1:{fw_port}/healthz", tmp / "fw-latency.log"):
        key = account_key(f"http://127.0.0.1:{fw_port}")
        for rate in args.rates:
            delay_ms = max(1, round(64 * 1000 / rate))
            runs: dict[str, list[dict[str, float]]] = {"direct": [], "relay": [], "floodwall": []}
            for _ in range(args.runs):  # interleaved: the machine's noise falls on all three alike
                for name, port, token in (("direct", model_port, ""), ("relay", relay_port, ""),
                                          ("floodwall", fw_port, key)):
                    runs[name].append(wrk(f"http://127.0.0.1:{port}{chat}", script, args.duration, 64,
                                          method="POST", key=token, delay_ms=delay_ms))
            med = {name: {p: statistics.median(r[p] for r in rows) for p in ("rps", "p50_ms", "p99_ms", "non_2xx")}
                   for name, rows in runs.items()}
            results[f"{rate}_rps"] = {
                **med,
                "added_p50_ms": round(med["floodwall"]["p50_ms"] - med["direct"]["p50_ms"], 3),
                "added_p99_ms": round(med["floodwall"]["p99_ms"] - med["direct"]["p99_ms"], 3),
                "relay_added_p50_ms": round(med["relay"]["p50_ms"] - med["direct"]["p50_ms"], 3),
                "relay_added_p99_ms": round(med["relay"]["p99_ms"] - med["direct"]["p99_ms"], 3),
            }
            row = results[f"{rate}_rps"]
            for pct in ("p50", "p99"):
                # what floodwall adds over what the hop alone adds, measured in the same run (issue 23)
                row[f"added_{pct}_over_relay"] = _ratio(row[f"added_{pct}_ms"], row[f"relay_added_{pct}_ms"])
                # ...and in each run of the three apps, to show the spread the medians hide
                row[f"runs_{pct}_over_relay"] = [_ratio(fw[f"{pct}_ms"] - direct[f"{pct}_ms"],
                                                        hop[f"{pct}_ms"] - direct[f"{pct}_ms"])
                                                 for direct, hop, fw in zip(runs["direct"], runs["relay"],
                                                                            runs["floodwall"], strict=True)]
    return {**results, "target": "added latency <= 1.5x the bare relay's, p50 and p99"}


def _ratio(added: float, relay: float) -> float | None:
    return round(added / relay, 2) if relay > 0 else None


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(tmp: Path, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    policy = PolicyFile.load().edge
    figures = {}
    for count, max_keys in ((1_000_000, 4_000_000), (4_000_000, 2_000_000)):
        gc.collect()
        store = MemoryStore(max_keys=max_keys)
        before = _rss_mb()
        base = 0x0A000000  # 10.0.0.0: distinct addresses, 256 to a /24
        for n in range(count):
            ip = base + n
            store.decide(policy.buckets("page", "normal", Caller(ip, ip & 0xFFFFFF00, "anonymous", None, None)))
        figures[f"{count:,} addresses, max_keys {max_keys:,}"] = {
            "rss_mb": round(_rss_mb() - before, 1), "buckets": len(store)}
        del store
    return {**figures, "target": "<= 100 MB for 1,000,000 addresses, bounded beyond"}


def _evalsha_calls() -> int:
    info = subprocess.run(["redis-cli", "info", "commandstats"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"cmdstat_evalsha:calls=(\d+)", info)
    return int(found.group(1)) if found else 0


def redis_part(tmp: Path, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    (tmp / "global.toml").write_text(GLOBAL_POLICY)
    state = f"redis://127.0.0.1:6379/0?prefix=fwbench-{secrets.token_hex(4)}:"
    env = settings_env(tmp, edge={"policy": str(tmp / "global.toml")}, state={"url": state},
                       upstream={"url": "http://127.0.0.1:9/v1"})
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with process(floodwall_cmd(ports[0]), env, f"{urls[0]}/healthz", tmp / "r1.log"), \
            process(floodwall_cmd(ports[1]), env, f"{urls[1]}/healthz", tmp / "r2.log"):
        # every /healthz is class status: one limit decision each, and nothing else calls the GCRA script;
        # the probe stays within the burst, so that every request is decided (refusals of a flooding address
        # are remembered for a moment and cost no round trip at all)
        probe = 90
        before = _evalsha_calls()
        with aiohttp_run() as run:
            run(_burst(f"{urls[0]}/healthz", probe))
        per_decision = (_evalsha_calls() - before) / probe
        time.sleep(3)  # the probe emptied the bucket: let it fill (burst 100 at 50/s) before counting
        # one global limit of 3000/min (50/s) with a burst of 100, driven through both processes at once
        command = ["wrk", "-t1", "-c16", f"-d{args.duration * 2}s", "-s", str(script)]
        procs = [subprocess.Popen([*command, f"{url}/healthz"], stdout=subprocess.PIPE, text=True) for url in urls]
        outputs = [p.communicate()[0] for p in procs]
    allowed, elapsed = 0, 0.0
    for text in outputs:
        done = re.search(r"(\d+) requests in ([\d.]+)s", text)
        assert done is not None, text
        elapsed = max(elapsed, float(done.group(2)))
        refused = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        allowed += int(done.group(1)) - (int(refused.group(1)) if refused else 0)
    expected = 100 + 50 * elapsed
    return {"round_trips_per_decision": round(per_decision, 3), "global_limit": "3000/1m burst 100, two processes",
            "seconds": elapsed, "allowed": allowed, "expected": round(expected),
            "accuracy": round(allowed / expected, 4), "target": "1 round trip; accuracy within 2%"}


class aiohttp_run:
    def __enter__(self) -> Any:
        self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete

    def __exit__(self, *exc: object) -> None:
        self.loop.close()


async def _burst(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(url) as response:
                await response.read()


# saturation: populations over real HTTP


async def _population(base: str, users: list[tuple[str | None, str]], stop: float,
                      results: list[tuple[float, int, float]], pause: float, max_tokens: int,
                      pauses: random.Random | None = None) -> None:
    """Each user (an API key or None, and its own loopback address) chats in a loop until `stop`, pausing
    `pause` seconds after a served call: always that long, or, with `pauses`, for a time drawn from it
    (exponentially distributed around `pause`, as people are: users who all pause alike act in lockstep)."""
    body = {"model": "floodwall-simulated-chat", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "Hello, how are you today?"}]}

    async def one_user(key: str | None, source: str) -> None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        connector = aiohttp.TCPConnector(limit=0, local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as response:
                        async for _ in response.content.iter_any():
                            pass
                        status = response.status
                except aiohttp.ClientError:
                    status = 0
                results.append((started, status, time.monotonic() - started))
                # a refused flooder comes straight back; a person, or a served call, pauses
                wait = pause if status == 200 or pause else 0.001
                await asyncio.sleep(pauses.expovariate(1 / wait) if pauses is not None and wait else wait)

    await asyncio.gather(*[one_user(key, source) for key, source in users])


def saturation(tmp: Path, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    model_port, fw_port = free_port(), free_port()
    slots, tps, reply = 8, 50, 16
    capacity = slots / (reply / tps)  # calls a second the model can finish
    model_env = {SETTINGS_ENV: load(environ={}, overrides={"model": {
        "slots": slots, "queue_size": 256, "tokens_per_second": tps, "reply_tokens": reply,
        "first_token_delay": 0.02}}).to_json()}
    # the default policy, told what an operator knows of their model server: how many calls it runs at once
    # (vLLM's max_num_seqs, OLLAMA_NUM_PARALLEL, llama.cpp's --parallel) as the floor of the learnt limit
    policy = DEFAULT_POLICY.read_text().replace("min_limit = 1", f"min_limit = {MIN_LIMIT}")
    (tmp / "saturation.toml").write_text(policy)
    env = settings_env(tmp, upstream={"url": f"http://127.0.0.1:{model_port}/v1"},
                       defense={"new_account_age": 20, "level": "normal"},
                       edge={"policy": str(tmp / "saturation.toml")})
    base = f"http://127.0.0.1:{fw_port}"
    model_cmd = [*GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"]
    with process(model_cmd, model_env, f"http://127.0.0.1:{model_port}/health", tmp / "model-sat.log"), \
            process(floodwall_cmd(fw_port), env, f"{base}/healthz", tmp / "fw-sat.log"):
        # each population speaks from its own loopback addresses, the flood from many networks, as real ones do
        established = [(account_key(base, f"est{i}@example.com", f"127.10.0.{i + 1}"), f"127.10.0.{i + 1}")
                       for i in range(4)]
        time.sleep(20.5)  # defense.new_account_age: these four are now established
        anonymous: list[tuple[str | None, str]] = [(None, f"127.30.{i}.1") for i in range(40)]
        newcomers: list[tuple[str | None, str]] = []

        async def run(flood: bool, seconds: float) -> dict[str, list[tuple[float, int, float]]]:
            results: dict[str, list[tuple[float, int, float]]] = {"established": [], "new": [], "anonymous": []}
            stop = time.monotonic() + seconds
            jobs = [_population(base, list(established), stop, results["established"], 0.2, reply)]
            if flood:
                # each flooding client retries as soon as it is refused, and keeps a call open when served
                jobs.append(_population(base, newcomers * 3, stop, results["new"], 0.0, reply))
                jobs.append(_population(base, anonymous, stop, results["anonymous"], 0.0, reply))
            await asyncio.gather(*jobs)
            return results

        with aiohttp_run() as loop_run:
            alone = loop_run(run(False, args.duration * 2))
            # made now, so that they are still new (younger than 20 s) for the whole flood
            newcomers += [(account_key(base, f"new{i}@example.com", f"127.20.{i}.1"), f"127.20.{i}.1")
                          for i in range(40)]
            flooded = loop_run(run(True, args.duration * 2))
    def p95(rows: list[tuple[float, int, float]]) -> float:
        ok = sorted(t for _, s, t in rows if s == 200)
        return ok[int(len(ok) * 0.95) - 1] if ok else float("nan")

    est = flooded["established"]
    offered = (len(flooded["new"]) + len(flooded["anonymous"])) / (args.duration * 2)
    return {
        "model_capacity_calls_per_s": round(capacity, 1),
        "admission_min_limit": MIN_LIMIT,
        "flood_offered_calls_per_s": round(offered, 1),
        "flood_multiple_of_capacity": round(offered / capacity, 1),
        "established_requests": len(est),
        "established_success": round(sum(1 for _, s, _ in est if s == 200) / max(1, len(est)), 5),
        "established_p95_alone_s": round(p95(alone["established"]), 3),
        "established_p95_flood_s": round(p95(est), 3),
        "p95_ratio": round(p95(est) / p95(alone["established"]), 2),
        "new_success": round(sum(1 for _, s, _ in flooded["new"] if s == 200) / max(1, len(flooded["new"])), 3),
        "new_statuses": _statuses(flooded["new"]),
        "anonymous_statuses": _statuses(flooded["anonymous"]),
        "target": "established success >= 99.9%, p95 <= 1.5x alone, flood >= 50x capacity",
    }


def _statuses(rows: list[tuple[float, int, float]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, status, _ in rows:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return counts


PARTS = {"rejection": rejection, "latency": latency, "memory": memory, "redis": redis_part,
         "saturation": saturation}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS))
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")], default=[100, 500],
                        help="offered loads for the latency part, requests/s over 64 connections")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fw-edge-"))
    script = write_lua(tmp)
    results = {}
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        results[name] = PARTS[name](tmp, args, script)
        print(json.dumps(results[name], indent=2), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "edge.json").write_text(json.dumps({"args": vars(args), "cores": os.cpu_count(), "results": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
