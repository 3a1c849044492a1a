"""Issue 23: replicas that share one model server admit by one limit. Two floodwall workers before a simulated
model of 4 slots that publishes vLLM's figures; 24 accounts stream calls back to back for 12 s. With state
in memory each worker admits alone (each believes the free slots are its own); with Redis they tell each
other what they admit (the Store's board, inference/admission.py). Printed per run: the model's own queue
(mean and max) and its busy slots, sampled every 50 ms after the first quarter of the run.

    python bench/replicas.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from _common import GRANIAN, account_key, process
from edge import floodwall_cmd, settings_env
from floodwall.config import SETTINGS_ENV, load
from floodwall.server import free_port


def run(state: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    mp, fp = free_port(), free_port()
    model_env = {SETTINGS_ENV: load(environ={}, overrides={"model": {
        "slots": 4, "queue_size": 1000, "tokens_per_second": 20, "reply_tokens": 20, "first_token_delay": 0.02,
        "metrics": True}}).to_json()}
    env = settings_env(tmp, upstream={"url": f"http://127.0.0.1:{mp}/v1", "metrics": "vllm"}, state={"url": state})
    cmd = floodwall_cmd(fp)
    cmd[cmd.index("--factory"):cmd.index("--factory")] = ["--workers", "2"]
    base, model = f"http://127.0.0.1:{fp}", f"http://127.0.0.1:{mp}"
    model_cmd = [*GRANIAN, "--factory", "--port", str(mp), "floodwall.sim.model:app_from_env"]
    with process(model_cmd, model_env, f"{model}/health", tmp / "m.log"), \
         process(cmd, env, f"{base}/healthz", tmp / "fw.log"):
        keys = [account_key(base, f"u{i}-{secrets.token_hex(3)}@example.com", f"127.30.0.{i + 1}") for i in range(24)]
        time.sleep(1)
        async def burst() -> list[tuple[int, int]]:
            samples: list[tuple[int, int]] = []
            stop = time.monotonic() + 12
            async def sample() -> None:
                async with aiohttp.ClientSession() as s:
                    while time.monotonic() < stop:
                        async with s.get(f"{model}/sim/stats") as r:
                            st = await r.json()
                        samples.append((st["active"], st["queued"]))
                        await asyncio.sleep(0.05)
            async def user(k: str) -> None:
                async with aiohttp.ClientSession() as s:
                    while time.monotonic() < stop - 1:
                        async with s.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {k}"},
                            json={"model": "floodwall-simulated-chat", "max_tokens": 20, "stream": True,
                                  "messages": [{"role": "user", "content": "hi"}]}) as r:
                            await r.read()
            await asyncio.gather(sample(), *[user(k) for k in keys])
            return samples
        samples = asyncio.run(burst())
    late = samples[len(samples) // 4:]  # after the first quarter: the limit has learnt
    return {"state": state.split(":")[0], "model_queue_mean": round(sum(q for _, q in late) / len(late), 2),
            "model_queue_max": max(q for _, q in late), "active_mean": round(sum(a for a, _ in late) / len(late), 2)}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    found: dict[str, list[dict[str, Any]]] = {"memory": [], "redis": []}
    for _ in range(args.runs):  # interleaved: the machine's noise falls on both alike
        for state in ("memory://", f"redis://127.0.0.1:6379/0?prefix=bench-replicas-{secrets.token_hex(3)}:"):
            result = run(state)
            found[result["state"]].append(result)
            print(json.dumps(result), flush=True)
    for name, runs in found.items():
        print(name, "median:", json.dumps({key: statistics.median(r[key] for r in runs)
                                            for key in ("model_queue_mean", "model_queue_max", "active_mean")}))


if __name__ == "__main__":
    main()
