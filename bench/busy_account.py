"""One established account with many calls in flight at once (an API client's batch job), clean prompts,
through floodwall to the simulated model answering in --reply-ms: how many of its prompts were scored on
their call's path (no strike left to hold for them: `prompt.unheld`), and its calls' latency against the
model's own, called directly with the same calls in flight.

    python bench/busy_account.py [--in-flight 8,16,64] [--reply-ms 200] [--seconds 10] [--level normal]
                                 [--warm 2] [--learn] [--long-prompts N]

At `flag` levels a prompt goes on unscored only with one of its account's strikes held for it (10 at normal):
the calls beyond wait a moment for one, as the prompts before are scored and give theirs back, and are scored
on their path if none comes. --long-prompts N: N other accounts send long clean prompts meanwhile, work the
prompt scorer process has to do beside this account's. Writes bench/out/busy_account.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from _common import ADMIN_TOKEN, CHAT, GRANIAN, account_key, pin_level, process
from edge import floodwall_cmd, latency_policy, settings_env
from floodwall.config import SETTINGS_ENV, load
from floodwall.server import free_port

OUT = Path(__file__).with_name("out")
LONG_IN_FLIGHT = 8
LONG = json.dumps({"model": "floodwall-simulated-chat", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "Please summarise this report. " + "word " * 3200}]})


async def calls(url: str, key: str, in_flight: int, seconds: float, body: str = CHAT,
                checked: bool = True) -> list[float]:
    """Latencies (seconds) of `in_flight` callers calling one after another for `seconds`; every answer a 200
    (where `checked`)."""
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:
        async def caller() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    assert answer.status == 200 or not checked, (answer.status, await answer.text())
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(caller() for _ in range(in_flight)))
    return latencies


def events(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).text
    found = {}
    for line in text.splitlines():
        if line.startswith("floodwall_events_total{"):
            name = line.split('event="', 1)[1].split('"', 1)[0]
            found[name] = float(line.rsplit(" ", 1)[1])
    return found


async def beside(measured: Any, others: list[Any]) -> list[float]:
    """The measured calls' latencies, the other accounts' calls running meanwhile."""
    found, *_ = await asyncio.gather(measured, *others)
    return list(found)


def figures(latencies: list[float]) -> dict[str, float]:
    latencies = sorted(latencies)
    return {"calls": len(latencies), "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", default=[8, 16, 64], type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--reply-ms", type=float, default=200.0, help="the model's time to answer a call")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--level", default="normal")
    parser.add_argument("--learn", action="store_true", help="admission not told the slots (min_limit 1, from "
                        "its initial 8), no warm-up: how soon it learns them from a cold start")
    parser.add_argument("--warm", type=float, default=2.0, help="seconds of the most calls in flight first, "
                        "untimed (connections opened, caches filled)")
    parser.add_argument("--long-prompts", type=int, default=0, help="other accounts sending long clean prompts "
                        "meanwhile (LONG_IN_FLIGHT calls each, 16,000 characters): work ahead in the prompt scorer")
    args = parser.parse_args()
    reply_tokens = 8  # (what CHAT asks for)
    model_env = {SETTINGS_ENV: load(environ={}, overrides={"model": {
        "slots": 4096, "queue_size": 4096, "tokens_per_second": reply_tokens * 1000 / args.reply_ms,
        "reply_tokens": reply_tokens, "first_token_delay": 0}}).to_json()}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        # no limit reached, and admission told the model's slots (min_limit): the strikes are what is measured
        slots = 1 if args.learn else max(args.in_flight) + args.long_prompts * LONG_IN_FLIGHT
        policy = latency_policy().replace("initial_limit = 8", f"initial_limit = {max(8, slots)}")
        (tmp / "policy.toml").write_text(policy.replace("min_limit = 1", f"min_limit = {slots}"))
        model_port, port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{model_port}/v1"
        env = settings_env(tmp, edge={"policy": str(tmp / "policy.toml")}, upstream={"url": upstream},
                           admin={"token": ADMIN_TOKEN})
        base = f"http://127.0.0.1:{port}"
        with process([*GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"],
                     model_env, f"http://127.0.0.1:{model_port}/health", tmp / "model.log"), \
                process(floodwall_cmd(port), env, f"{base}/healthz", tmp / "floodwall.log"):
            key = account_key(base)
            long_keys = [account_key(base, f"long{n}@example.com", f"127.0.0.{10 + n}")  # (sign-ups: per address)
                         for n in range(args.long_prompts)]
            if args.level != "normal":
                pin_level(base, args.level, "bench/busy_account.py")
            if args.warm and not args.learn:
                asyncio.run(calls(f"{base}/v1/chat/completions", key, max(args.in_flight), args.warm))
            for in_flight in args.in_flight:
                direct = figures(asyncio.run(calls(f"{upstream}/chat/completions", "", in_flight, args.seconds)))
                before = events(base)
                chat = f"{base}/v1/chat/completions"
                through = figures(asyncio.run(beside(
                    calls(chat, key, in_flight, args.seconds),
                    [calls(chat, other, LONG_IN_FLIGHT, args.seconds, LONG, checked=False) for other in long_keys])))
                after = events(base)
                admission = httpx.get(f"{base}/admin/api/admission",
                                      headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
                unheld = after.get("prompt.unheld", 0.0) - before.get("prompt.unheld", 0.0)
                row = {"direct": direct, "floodwall": through,
                       "scored_on_path": int(unheld), "scored_on_path_share": round(unheld / through["calls"], 3),
                       "added_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 1),
                       "added_p95_ms": round(through["p95_ms"] - direct["p95_ms"], 1),
                       "admission_limit_after": admission["limit"]}
                results[f"{in_flight}_in_flight"] = row
                print(f"{in_flight} in flight: {through['calls']} calls, {row['scored_on_path']} scored on their "
                      f"path ({row['scored_on_path_share']:.1%}); added p50 {row['added_p50_ms']} ms, p95 "
                      f"{row['added_p95_ms']} ms (model alone p50 {direct['p50_ms']} ms); admission's limit then "
                      f"{row['admission_limit_after']}", flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "busy_account.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
