"""What each part of floodwall's path adds to an admitted call's latency, served as bench/edge.py's latency
part serves it (granian, wrk, 64 connections, exponentially distributed pauses): floodwall whole and with
parts taken off, beside the bare relay and the model called directly, interleaved run by run (the order of
the floodwall servers alternating), with each server's event-loop CPU a call. bench/path.py prices the same
parts in one process; here the server's hops, the prompt scorer's process and the calls' overlap are in it.

    python bench/ablate.py [--skip gate,screening,scorer] [--rate 500] [--runs 5] [--duration 8]

--skip names the variants beside floodwall whole, each with one part off (a price list, not a product):
`gate`, the gate's decision for a model call remembered from the first one (no limits, lookups or strikes);
`screening`, prompt screening answering at once (nothing left aside, no scorer work); `scorer`, the scorer
process replaced by a clean answer on the next turn of the loop (what screening's own bookkeeping costs,
without the process and its pipe). Needs wrk. As an app (a server's factory): BENCH_SKIP=part.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _common import GRANIAN, account_key, fast_model_env, process, write_lua, wrk
from cpu_per_call import loop_seconds, server_pid
from edge import latency_policy, settings_env
from floodwall.server import free_port


def _skip(part: str) -> None:
    """Take `part` off floodwall's path in this process (before the app is built)."""
    if part == "gate":
        from floodwall.edge.gate import Gate

        decide = Gate.decide
        remembered: dict[str, Any] = {}

        async def remembered_decision(self: Gate, scope: Any, klass: str, text: str, spend: bool = True) -> Any:
            if klass != "api-inference":  # (the bench's own sign-up and key are decided as ever)
                return await decide(self, scope, klass, text, spend)
            if klass not in remembered:
                found = await decide(self, scope, klass, text, spend)
                if found.held is not None:
                    found.held.release()
                remembered[klass] = dataclasses.replace(found, held=None, strikes=[])
            return remembered[klass]

        Gate.decide = remembered_decision  # type: ignore[method-assign]
    elif part == "screening":
        from floodwall.defense.screening import PromptGuard

        async def unscreened(self: PromptGuard, *args: Any, **kwargs: Any) -> None:
            return None

        PromptGuard.check = unscreened  # type: ignore[method-assign]
    elif part == "scorer":
        import asyncio

        from floodwall.defense.prompts import Verdict
        from floodwall.defense.scorer import Scorer, Scores

        clean = Scores(Verdict(0, ()), 0.0)

        def answered(self: Scorer, text: str, with_model: bool, reply: Any, *args: Any, **kwargs: Any) -> bool:
            asyncio.get_running_loop().call_soon(reply, clean)
            return True

        Scorer.submit = answered  # type: ignore[method-assign]
    elif part:
        raise ValueError(f"no part {part!r} to take off")


def app_from_env() -> Any:
    _skip(os.environ.get("BENCH_SKIP", ""))
    from floodwall.app import app_from_env as floodwall_app

    return floodwall_app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", default="gate,screening,scorer", type=lambda s: [p for p in s.split(",") if p])
    parser.add_argument("--rate", type=int, default=500, help="requests/s offered over 64 connections")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    here = str(Path(__file__).parent)
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        tmp = Path(folder)
        script = write_lua(tmp)
        model_port, relay_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{model_port}/v1"
        (tmp / "latency.toml").write_text(latency_policy())
        env = settings_env(tmp, edge={"policy": str(tmp / "latency.toml")}, upstream={"url": upstream})
        stack.enter_context(process([*GRANIAN, "--factory", "--port", str(model_port),
                                     "floodwall.sim.model:app_from_env"], fast_model_env(),
                                    f"http://127.0.0.1:{model_port}/health", tmp / "model.log"))
        stack.enter_context(process([*GRANIAN, "--port", str(relay_port), "bare_relay:app"],
                                    {"PYTHONPATH": here, "BENCH_UPSTREAM": upstream},
                                    f"http://127.0.0.1:{relay_port}/health", tmp / "relay.log", expect=404))
        servers = []
        for n, part in enumerate(["", *args.skip]):
            port = free_port()
            stack.enter_context(process(
                [*GRANIAN, "--factory", "--port", str(port), "ablate:app_from_env"],
                {**env, "BENCH_SKIP": part,
                 "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)},
                f"http://127.0.0.1:{port}/healthz", tmp / f"floodwall{n}.log"))
            name = f"without {part}" if part else "floodwall"
            servers.append((name, port, account_key(f"http://127.0.0.1:{port}", f"ablate{n}@example.com")))
        delay_ms = max(1, round(64 * 1000 / args.rate))
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in ("direct", "relay", *(s[0] for s in servers))}
        for run in range(args.runs):
            order = [("direct", model_port, ""), ("relay", relay_port, ""),
                     *(servers if run % 2 == 0 else servers[::-1])]
            for name, port, key in order:
                pid = server_pid(port) if name != "direct" else None
                before = loop_seconds(pid) if pid else 0.0
                found = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", script, args.duration, 64,
                            method="POST", key=key, delay_ms=delay_ms)
                if pid:
                    found["loop_ms_per_call"] = (loop_seconds(pid) - before) * 1000 / max(1.0, found["requests"])
                rows[name].append(found)
        direct = {p: statistics.median(r[f"{p}_ms"] for r in rows["direct"]) for p in ("p50", "p99")}
        relay = {p: statistics.median(r[f"{p}_ms"] for r in rows["relay"]) - direct[p] for p in ("p50", "p99")}
        print(f"{args.rate} req/s, {args.runs} runs of {args.duration} s; added ms over the model called directly, "
              f"median of the runs (over the relay's), event-loop CPU a call")
        for name, found in rows.items():
            if name == "direct":
                continue
            added = {p: statistics.median(r[f"{p}_ms"] for r in found) - direct[p] for p in ("p50", "p99")}
            loop = statistics.median(r["loop_ms_per_call"] for r in found)
            print(f"  {name:20} p50 +{added['p50']:.3f} ({added['p50'] / relay['p50']:.2f}x)  p99 "
                  f"+{added['p99']:.3f} ({added['p99'] / relay['p99']:.2f}x)  loop {loop:.3f} ms a call", flush=True)


if __name__ == "__main__":
    main()
