"""Issue 23's saturation scenario: established users on a model server floodwall was told nothing about.

A vLLM-like simulated model (N slots, an unbounded FIFO queue, on the same 2 cores) behind floodwall with the
default policy (min_limit 1: no hint of the slots), a dozen established users chatting (pausing 0.2 s on
average between calls, exponentially distributed), forty brand-new accounts holding three streams each (still
new when the attack ends), and a flood of the API and the home page from 2,000 addresses. Each run has a calm
phase (the established users alone) and an attack phase of the same length; both are measured.

Per run: the established calls served and their p95 (calm and under attack); the model's own service time
p95 in each phase (slot taken to last token, from the simulated model); and how busy the model's slots were
while any call waited in floodwall's queue (sampled every 100 ms).

    python bench/saturation.py [--slots 4,8,16] [--figures off,on] [--runs 3] [--seconds 15]

Judged (the median of the runs): established >= 99.9% served (at least 200 calls); p95 under attack over
calm <= max(1.5, 1.25 x the model's own slowdown) without figures, <= max(1.3, 1.1 x) with vLLM's figures;
slots >= 90% busy while calls wait. Writes bench/out/saturation.json, and every sample (floodwall's
`/admin/api/admission` and the model's slots, every 100 ms) to bench/out/saturation_trace.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from _common import GRANIAN, account_key, process
from edge import _population, aiohttp_run, floodwall_cmd, settings_env
from floodwall.config import SETTINGS_ENV, load
from floodwall.server import free_port

OUT = Path(__file__).with_name("out")
TOKEN = "admin-" + secrets.token_hex(16)
TPS, REPLY = 50, 16  # tokens a second a slot, tokens a reply: a call holds a slot about a third of a second
TRACE: list[dict[str, Any]] = []  # every sample of every run: floodwall's admission state and the model's
PARTS = {"new", "flood"}  # the attack's parts (--attack): new accounts' streams, the flood of addresses


async def _flood(base: str, stop: float, counts: dict[str, int], addresses: int = 2000, workers: int = 200) -> None:
    """The home page and the API, from `addresses` loopback addresses, as fast as `workers` can ask."""
    per = addresses // workers

    async def worker(w: int) -> None:
        sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=0, local_addr=(f"127.{50 + (w * per + i) // 250}.{(w * per + i) % 250}.9", 0)),
            timeout=aiohttp.ClientTimeout(total=30)) for i in range(per)]
        try:
            n = 0
            while time.monotonic() < stop:
                session = sessions[n % per]
                n += 1
                try:
                    if n % 2:
                        async with session.get(f"{base}/") as response:
                            await response.read()
                    else:
                        async with session.post(f"{base}/v1/chat/completions", json={"model": "x"},
                                                headers={"authorization": "Bearer fw_" + "x" * 43}) as response:
                            await response.read()
                    counts[str(response.status)] = counts.get(str(response.status), 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["error"] = counts.get("error", 0) + 1
                    await asyncio.sleep(0.05)
        finally:
            for session in sessions:
                await session.close()

    await asyncio.gather(*[worker(w) for w in range(workers)])


def _attack(base: str, newcomers: list[tuple[str | None, str]], stop: float, parts: list[str],
            answer: Any) -> None:
    """The attack's process: the new accounts' streams (three each) and the flood, until `stop` (the
    monotonic clock is the machine's, the same in every process); puts (the new accounts' calls, the
    flood's answers by status)."""
    new: list[tuple[float, int, float]] = []
    counts: dict[str, int] = {}

    async def both() -> None:
        jobs = []
        if "new" in parts:
            jobs.append(_population(base, newcomers * 3, stop, new, 0.0, REPLY))
        if "flood" in parts:
            jobs.append(_flood(base, stop, counts))
        await asyncio.gather(*jobs)

    asyncio.run(both())
    answer.put((new, counts))


async def _lag(stop: float, lags: list[float]) -> None:
    """How late the established users' own client loop runs (ms), every 100 ms: what it adds to what they
    measure."""
    while time.monotonic() < stop:
        asked = time.monotonic()
        await asyncio.sleep(0.1)
        lags.append((time.monotonic() - asked - 0.1) * 1000)


async def _sample(base: str, model: str, stop: float, samples: list[tuple[int, int, int, float, int]]) -> None:
    """(calls waiting in floodwall's queue, slots busy, model's queue, floodwall's event-loop lag in ms,
    floodwall's limit) every 100 ms."""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop:
            try:
                async with session.get(f"{base}/admin/api/admission",
                                       headers={"authorization": f"Bearer {TOKEN}"}) as answer:
                    admission = await answer.json()
                async with session.get(f"{model}/sim/stats") as answer:
                    stats = await answer.json()
                samples.append((sum(admission["queued"].values()), stats["active"], stats["queued"],
                                admission["loop_lag_ms"], admission["limit"]))
                TRACE.append({"at": round(time.monotonic(), 3), "model_active": stats["active"],
                              "model_queued": stats["queued"], "admission": admission})
            except (aiohttp.ClientError, TimeoutError, KeyError):
                pass
            await asyncio.sleep(0.1)


def _p95(rows: list[tuple[float, int, float]]) -> float:
    ok = sorted(t for _, s, t in rows if s == 200)
    return ok[max(0, int(len(ok) * 0.95) - 1)] if ok else float("nan")


def _service_p95(model: str, since: float) -> float:
    import httpx

    stats = httpx.get(f"{model}/sim/stats", params={"since": since}).json()
    return float(stats["service"]["p95"] or "nan")


def one_run(tmp: Path, slots: int, figures: bool, seconds: int, policy: str = "", seed: int = 0) -> dict[str, Any]:
    model_port, fw_port = free_port(), free_port()
    # defense.new_account_age: the established users are older than this when the calm begins, and the new
    # accounts, made as the attack begins, are still younger when it ends (else they join the established
    # tier halfway through it, which is not the scenario)
    new_age = seconds + 5
    model_env = {SETTINGS_ENV: load(environ={}, overrides={"model": {
        "slots": slots, "queue_size": 1_000_000, "tokens_per_second": TPS, "reply_tokens": REPLY,
        "first_token_delay": 0.02, "metrics": figures}}).to_json()}
    env = settings_env(tmp, upstream={"url": f"http://127.0.0.1:{model_port}/v1",
                                      "metrics": "vllm" if figures else "none"},
                       defense={"new_account_age": new_age, "level": "normal"}, admin={"token": TOKEN},
                       edge={"policy": policy})
    base, model = f"http://127.0.0.1:{fw_port}", f"http://127.0.0.1:{model_port}"
    model_cmd = [*GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"]
    with process(model_cmd, model_env, f"{model}/health", tmp / "model.log"), \
            process(floodwall_cmd(fw_port), env, f"{base}/healthz", tmp / "fw.log"):
        tag = secrets.token_hex(3)
        established = [(account_key(base, f"est{i}-{tag}@example.com", f"127.10.0.{i + 1}"), f"127.10.0.{i + 1}")
                       for i in range(12)]
        time.sleep(new_age + 0.5)  # these are established now
        import httpx

        def model_now() -> float:
            return float(httpx.get(f"{model}/sim/stats").json()["now"])

        async def phase(flood: bool, newcomers: list[tuple[str | None, str]]) -> dict[str, Any]:
            results: dict[str, list[tuple[float, int, float]]] = {"established": [], "new": []}
            samples: list[tuple[int, int, int, float, int]] = []
            lags: list[float] = []
            stop = time.monotonic() + seconds
            # the attackers are other people on other clients: their own process, so that the time their
            # client loop spends on the flood is not counted in the established users' latency (it shares
            # the machine's two cores with floodwall and the model, as the scenario says)
            attackers = mp.get_context("spawn")
            answer = attackers.Queue()
            attack = attackers.Process(target=_attack, args=(base, newcomers, stop, sorted(PARTS), answer))
            if flood:
                attack.start()
            # people pause for different times: 0.2 s on average, exponentially distributed (seeded by the run)
            await asyncio.gather(_population(base, list(established), stop, results["established"], 0.2, REPLY,
                                             random.Random(seed)),
                                 _sample(base, model, stop, samples), _lag(stop, lags))
            counts: dict[str, int] = {}
            if flood:
                results["new"], counts = await asyncio.to_thread(answer.get, True, 120)
                attack.join(30)
            return {"results": results, "counts": counts, "samples": samples, "client_lags": lags}

        with aiohttp_run() as run:
            calm_since = model_now()
            calm = run(phase(False, []))
            calm_service = _service_p95(model, calm_since)
            newcomers: list[tuple[str | None, str]] = [
                (account_key(base, f"new{i}-{tag}@example.com", f"127.20.{i}.1"), f"127.20.{i}.1") for i in range(40)]
            attack_since = model_now()
            attack = run(phase(True, newcomers))
            attack_service = _service_p95(model, attack_since)
    est = attack["results"]["established"]
    waiting = [(active, model_queue) for queued, active, model_queue, _, _ in attack["samples"] if queued > 0]
    lags = [lag for *_, lag, _ in attack["samples"]]
    limits = [limit for *_, limit in attack["samples"]]
    slowdown = attack_service / calm_service
    ratio = _p95(est) / _p95(calm["results"]["established"])
    bound = max(1.3, 1.1 * slowdown) if figures else max(1.5, 1.25 * slowdown)
    return {
        "established_calls": len(est),
        "established_served": round(sum(1 for _, s, _ in est if s == 200) / max(1, len(est)), 5),
        "p95_calm_s": round(_p95(calm["results"]["established"]), 3), "p95_attack_s": round(_p95(est), 3),
        "p95_ratio": round(ratio, 2), "model_service_p95_calm_s": round(calm_service, 3),
        "model_service_p95_attack_s": round(attack_service, 3), "model_slowdown": round(slowdown, 2),
        "p95_bound": round(bound, 2), "p95_met": ratio <= bound,
        "slots_busy_while_waiting": round(statistics.mean(a / slots for a, _ in waiting), 3) if waiting else None,
        "samples_with_calls_waiting": len(waiting), "model_queue_mean_while_waiting":
            round(statistics.mean(q for _, q in waiting), 2) if waiting else None,
        "loop_lag_ms_attack": round(statistics.mean(lags), 2) if lags else None,
        "client_loop_lag_ms_attack": round(statistics.mean(attack["client_lags"]), 2),
        "limit_attack_median": statistics.median(limits) if limits else None,
        "new_calls": len(attack["results"]["new"]),
        "new_served": sum(1 for _, s, _ in attack["results"]["new"] if s == 200),
        "flood_answers": attack["counts"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", default="4,8,16")
    parser.add_argument("--figures", default="off,on")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--attack", default="new,flood", help="the attack's parts, to see each one's effect")
    parser.add_argument("--policy", default="", help="a policy file instead of the default (to compare)")
    args = parser.parse_args()
    PARTS.clear()
    PARTS.update(args.attack.split(","))
    results: dict[str, Any] = {}
    for figures in args.figures.split(","):
        for slots in (int(n) for n in args.slots.split(",")):
            name = f"{slots} slots, figures {figures}"
            runs = [one_run(Path(tempfile.mkdtemp(prefix="fw-sat-")), slots, figures == "on", args.seconds,
                            args.policy, seed)
                    for seed in range(args.runs)]
            median = {key: statistics.median(r[key] for r in runs) for key in
                      ("established_served", "p95_ratio", "model_slowdown", "p95_bound", "established_calls")
                      if all(r[key] is not None for r in runs)}
            busy = [r["slots_busy_while_waiting"] for r in runs if r["slots_busy_while_waiting"] is not None]
            median["slots_busy_while_waiting"] = statistics.median(busy) if busy else None
            results[name] = {"median": median, "runs": runs}
            print(name, json.dumps(median), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "saturation.json").write_text(json.dumps(results, indent=2))
    (OUT / "saturation_trace.json").write_text(json.dumps(TRACE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
