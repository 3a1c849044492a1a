"""The request path's own cost, in one process: an admitted chat call through floodwall's ASGI app and
through the bare relay (bench/bare_relay.py), both against the same simulated model, timed from the app's
entry to its answer's last send. Interleaved, one call of each in turn, so the machine's noise falls on
both alike; with no pause between calls (warm caches) and with a pause (cold: as at 100 calls a second).

    python bench/path.py [--calls 3000] [--pause-ms 0,2] [--between sleep|spin|evict] [--skip gate,screening]
                         [--rounds 1] [--profile]

--between says how the pause passes: asleep on the event loop (as between a server's calls), spinning (the
CPU awake, its caches kept) or spinning after reading 32 MiB (every cache emptied, the CPU awake): what a
cold call costs apart from what sleeping costs. --skip takes parts of floodwall's path off it, to price
them: the gate's decision remembered from the first call, prompt screening answering at once.

Without a server or wrk in between this is steadier than bench/edge.py's latency part (which it does not
replace: that one is what a client sees). --profile prints where floodwall's time goes (cProfile, warm).
bench/stages.py marks the steps inside a granian worker instead, where the server's own hops (receive, send) show.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CHAT, GRANIAN, fast_model_env, process
from edge import latency_policy, settings_env
from floodwall.config import SETTINGS_ENV, Settings
from floodwall.server import free_port

OUT = Path(__file__).with_name("out")
EVICT = bytearray(32 * 2**20)  # more than this machine's last-level cache


async def pause(ms: float, how: str) -> None:
    if how == "sleep":
        await asyncio.sleep(ms / 1000)
        return
    end = time.perf_counter() + ms / 1000
    if how == "evict":
        EVICT[:] = bytes(len(EVICT))  # written whole: every line passes through the caches
    while time.perf_counter() < end:
        pass


def skipping(parts: list[str]) -> None:
    """Take `parts` off floodwall's path (a price list, not a product): `gate`, its decision remembered from
    the first call; `screening`, answering at once with nothing left aside."""
    from floodwall.defense.screening import PromptGuard
    from floodwall.edge.gate import Gate

    if "gate" in parts:
        decide = Gate.decide
        remembered: dict[str, Any] = {}

        async def remembered_decision(self: Gate, *args: Any, **kwargs: Any) -> Any:
            if "found" not in remembered:
                found = await decide(self, *args, **kwargs)
                if found.held is not None:
                    found.held.release()
                # no strikes looked at: a strike held once cannot serve every call (each would go unheld)
                remembered["found"] = dataclasses.replace(found, held=None, strikes=[])
            return remembered["found"]

        Gate.decide = remembered_decision  # type: ignore[method-assign]
    if "screening" in parts:
        async def unscreened(self: PromptGuard, *args: Any, **kwargs: Any) -> None:
            return None

        PromptGuard.check = unscreened  # type: ignore[method-assign]


class Lifespan:
    """Runs an ASGI app's lifespan (startup now, shutdown at close), as a server does."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.state: dict[str, Any] = {}

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self.task = asyncio.ensure_future(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        started = await self.outbox.get()
        assert started["type"] == "lifespan.startup.complete", started

    async def stop(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        await self.task


def chat_scope(key: str, state: dict[str, Any], body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"user-agent", b"bench-path/1")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
            "state": dict(state)}


async def one_call(app: Any, key: str, state: dict[str, Any], body: bytes) -> float:
    """Seconds from the app's entry to its answer's last send; the answer must be a 200."""
    sent = False
    status = 0
    finished = 0.0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client stays: no disconnect
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, finished
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            finished = time.perf_counter()

    started = time.perf_counter()
    await app(chat_scope(key, state, body), receive, send)
    assert status == 200, status
    return finished - started


async def make_key(app: Any) -> str:
    import httpx

    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40001))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as web:
        web.headers["user-agent"] = "bench-path/1"
        await web.post("/auth/register", json={"email": "path@example.com", "password": "benchmark password"})
        await web.post("/auth/login", json={"email": "path@example.com", "password": "benchmark password"})
        answer = await web.post("/account/keys", json={"name": "bench"})
        key: str = answer.json()["key"]
        return key


async def measure(args: argparse.Namespace, upstream: str, settings: Settings) -> dict[str, Any]:
    os.environ["BENCH_UPSTREAM"] = upstream
    import bare_relay
    from floodwall import logs
    from floodwall.app import build_app

    logs.setup(settings.log.level, settings.log.format, settings.log.audit_file)  # as a worker does
    gate = build_app(settings)
    floodwall, relay = Lifespan(gate), Lifespan(bare_relay.app)
    await floodwall.start()
    await relay.start()
    body = CHAT.encode()
    results: dict[str, Any] = {}
    try:
        key = await make_key(gate)
        skipping(args.skip)  # (after the key is made: the gate decided its sign-up)
        for _ in range(200):  # warm both: connections to the model open, caches filled
            await one_call(gate, key, floodwall.state, body)
            await one_call(bare_relay.app, "", relay.state, body)
        for _ in range(args.rounds):
            for pause_ms in args.pause_ms:
                times: dict[str, list[float]] = {"floodwall": [], "relay": []}
                for _ in range(args.calls):
                    for name, app, token, state in (("floodwall", gate, key, floodwall.state),
                                                    ("relay", bare_relay.app, "", relay.state)):
                        if pause_ms:
                            await pause(pause_ms, args.between)
                        times[name].append(await one_call(app, token, state, body))
                row: dict[str, Any] = {}
                for name, samples in times.items():
                    samples.sort()
                    row[name] = {"p50_ms": round(statistics.median(samples) * 1000, 3),
                                 "p90_ms": round(samples[int(len(samples) * 0.9)] * 1000, 3),
                                 "p99_ms": round(samples[int(len(samples) * 0.99)] * 1000, 3)}
                row["over_relay_p50_ms"] = round(row["floodwall"]["p50_ms"] - row["relay"]["p50_ms"], 3)
                row["over_relay_p99_ms"] = round(row["floodwall"]["p99_ms"] - row["relay"]["p99_ms"], 3)
                results.setdefault(f"pause_{pause_ms}ms", []).append(row)
                print(f"pause {pause_ms} ms ({args.between}): floodwall p50 {row['floodwall']['p50_ms']} ms, relay "
                      f"p50 {row['relay']['p50_ms']} ms, floodwall over the relay {row['over_relay_p50_ms']} ms; p99 "
                      f"{row['floodwall']['p99_ms']} and {row['relay']['p99_ms']} ms, over "
                      f"{row['over_relay_p99_ms']} ms",
                      flush=True)
        if args.profile:
            for name, app, token, state in (("relay", bare_relay.app, "", relay.state),
                                            ("floodwall", gate, key, floodwall.state)):
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(args.calls):
                    await one_call(app, token, state, body)
                await asyncio.sleep(1.5)  # what a call leaves for later (usage, scoring) is counted too
                profile.disable()
                stats = pstats.Stats(profile)
                # frames (Python functions, a coroutine's each resumption) apart from calls into C (builtins): a
                # frame costs some 0.3 µs more at the cold caches a call meets between others
                frames = sum(row[1] for where, row in stats.stats.items() if where[0] != "~")  # type: ignore[attr-defined]
                print(f"{name}: {stats.total_calls / args.calls:.0f} Python function calls a call, "  # type: ignore[attr-defined]
                      f"{frames / args.calls:.0f} of them Python-level")
                if name == "floodwall":
                    stats.sort_stats("tottime").print_stats(60)
                    stats.sort_stats("cumulative").print_stats("floodwall", 45)
    finally:
        await relay.stop()
        await floodwall.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="timed calls of each app, per pause")
    parser.add_argument("--pause-ms", default="0,2", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--between", default="sleep", choices=["sleep", "spin", "evict"],
                        help="how a pause passes: asleep, spinning, or spinning after emptying the caches")
    parser.add_argument("--skip", default=[], type=lambda s: [p for p in s.split(",") if p],
                        help="parts taken off floodwall's path: gate, screening")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every pause, one after another")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "policy.toml").write_text(latency_policy())  # as bench/edge.py's latency part
        model_port = free_port()
        upstream = f"http://127.0.0.1:{model_port}/v1"
        env = settings_env(tmp, edge={"policy": str(tmp / "policy.toml")}, upstream={"url": upstream})
        settings = Settings.from_json(env[SETTINGS_ENV])
        model_cmd = [*GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"]
        with process(model_cmd, fast_model_env(), f"http://127.0.0.1:{model_port}/health", tmp / "model.log"):
            import uvloop  # granian's loop

            results = uvloop.run(measure(args, upstream, settings))
    OUT.mkdir(exist_ok=True)
    (OUT / "path.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
