"""Where an admitted call's time goes inside the server: floodwall and the bare relay (bare_relay.py, under
/relay) served by one granian worker, marks taken at the entry and exit of the path's steps, and the median and
99th percentile gap between consecutive marks over the calls. Both apps in one process, so the machine, the
server and its threads are the same for both; unlike bench/path.py, granian's own hops (a receive(), a send)
are in it.

    python bench/stages.py [--rate 100] [--seconds 8] [--runs 2] [--detail decide|admit|after]
    PYTHONPATH=TREE/src python bench/stages.py ...   (another checkout's floodwall, for an A/B)

Found with it (2026-12-07): a receive() costs the worker 100-145 µs (granian's I/O thread), so a body whole
at its declared length no longer waits for the server's last, empty message; the pipe write to the scorer
process left the call's path. A mark costs about a microsecond, so short steps read long. The same steps take
about twice as long at 100 calls/s as at 500: between calls 10 ms apart, what a call touches leaves the caches.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import functools
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

_MARKS: contextvars.ContextVar[list[tuple[str, float]] | None] = contextvars.ContextVar("marks", default=None)
_CALLS: dict[str, list[list[tuple[str, float]]]] = collections.defaultdict(list)


def _mark(name: str) -> None:
    marks = _MARKS.get()
    if marks is not None:
        marks.append((name, time.perf_counter()))


def _around(owner: Any, attr: str, name: str) -> None:
    """Marks at the entry and the exit of owner.attr (a coroutine function or a plain one), where it exists
    (another tree's floodwall may not have it)."""
    inner = getattr(owner, attr, None)
    if inner is None:
        return
    if asyncio.iscoroutinefunction(inner):
        @functools.wraps(inner)
        async def marked(*args: Any, **kwargs: Any) -> Any:
            _mark(name + ">")
            try:
                return await inner(*args, **kwargs)
            finally:
                _mark(name + "<")
    else:
        @functools.wraps(inner)
        def marked(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            _mark(name + ">")
            try:
                return inner(*args, **kwargs)
            finally:
                _mark(name + "<")
    setattr(owner, attr, marked)


def _steps(detail: str) -> None:
    from floodwall.accounts.service import AccountService
    from floodwall.defense.screening import PromptGuard
    from floodwall.edge import gate
    from floodwall.inference import admission, http1, proxy, upstream
    from floodwall.state.memory import MemoryStore
    from floodwall.web import api

    for owner, attr, name in ((gate.Gate, "decide", "gate"), (api.InferenceEndpoint, "__call__", "endpoint"),
                              (api, "receive_body", "body"), (PromptGuard, "check", "screening"),
                              (proxy.InferenceCall, "__call__", "call"), (admission.Admission, "admit", "admission"),
                              (upstream.Upstream, "open", "upstream"), (http1.Pool, "request", "model"),
                              (proxy, "read_with_timeout", "read")):
        _around(owner, attr, name)
    details: dict[str, list[tuple[Any, str]]] = {
        "decide": [(gate, "cross_site"), (gate, "credential"), (gate, "first_refusal"), (gate.Gate, "blocked"),
                   (gate.Gate, "tier"), (gate.Gate, "buckets"), (gate.Gate, "strike_buckets"),
                   (AccountService, "cached_principal"), (MemoryStore, "decide_now")],
        "admit": [(admission, "cost"), (admission, "hold_length"), (admission, "ratelimit"),
                  (admission.Admission, "_starts_now"), (admission.Admission, "_start"), (MemoryStore, "decide_now")],
        "after": [(admission.Admission, "release"), (admission.Admission, "reconcile"),
                  (proxy.InferenceCall, "_account"), (proxy.DisconnectWatch, "stop")],
    }
    for owner, attr in details.get(detail, []):
        _around(owner, attr, attr.strip("_"))


class _Marked:
    """An awaitable that marks when it is done."""

    def __init__(self, inner: Any, name: str) -> None:
        self.inner, self.name = inner, name

    def __await__(self) -> Any:
        message = yield from self.inner.__await__()
        _mark(self.name)
        return message


def _timed(app: Any, name: str) -> Any:
    async def timed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        marks = [("entry", time.perf_counter())]
        _MARKS.set(marks)
        received = 0

        def receiving() -> Any:
            # not a coroutine: where the server's receive() starts its work when called (granian), so does
            # this, as the app sees it without the marks
            nonlocal received
            received += 1
            _mark(f"receive{received}>")
            return _Marked(receive(), f"receive{received}<")

        async def sending(message: dict[str, Any]) -> None:
            _mark("send " + message["type"].removeprefix("http.response."))
            await send(message)

        await app(scope, receiving, sending)
        _mark("return")
        _CALLS[name].append(marks)

    return timed


def figures() -> dict[str, dict[str, Any]]:
    """Per app, the median and 99th percentile gap between consecutive marks, in µs (the gaps seen in most
    calls)."""
    found: dict[str, dict[str, Any]] = {}
    for name, calls in _CALLS.items():
        gaps: dict[str, list[float]] = collections.defaultdict(list)
        for marks in calls:
            for (before, t0), (after, t1) in itertools.pairwise(marks):
                gaps[f"{before} -> {after}"].append((t1 - t0) * 1e6)
        found[name] = {step: (round(statistics.median(times), 1),
                              round(statistics.quantiles(times, n=100)[98] if len(times) > 1 else times[0], 1))
                       for step, times in gaps.items() if len(times) >= max(1, len(calls) // 2)}
        found[name]["calls"] = len(calls)
    return found


def app_from_env() -> Any:
    """The worker's app: floodwall (its steps marked), the bare relay under /relay, the figures at /stages."""
    import bare_relay
    from floodwall.app import app_from_env as floodwall_app

    _steps(os.environ.get("BENCH_DETAIL", ""))
    inner = floodwall_app()
    floodwall, relay = _timed(inner, "floodwall"), _timed(bare_relay.app, "relay")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/stages":
            body = json.dumps(figures()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "http" and scope["path"].startswith("/relay/"):
            if bare_relay._client is None:  # (the worker's lifespan is floodwall's)
                bare_relay._client = bare_relay.Ours()
            path = scope["path"].removeprefix("/relay")
            await relay({**scope, "path": path, "raw_path": path.encode()}, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await floodwall(scope, receive, send)
        else:  # its lifespan, the account's sign-up, the pages
            await inner(scope, receive, send)

    return app


def main() -> None:
    import httpx

    from _common import GRANIAN, account_key, fast_model_env, process, write_lua, wrk
    from edge import latency_policy, settings_env
    from floodwall.server import free_port

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=100, help="calls a second offered over 64 connections")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2, help="runs of each app, interleaved")
    parser.add_argument("--detail", default="", choices=["", "decide", "admit", "after"],
                        help="marks inside the gate's decision, admission, or the work after the answer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model_port, port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{model_port}/v1"
        (tmp / "policy.toml").write_text(latency_policy())
        env = {**settings_env(tmp, edge={"policy": str(tmp / "policy.toml")}, upstream={"url": upstream}),
               "BENCH_UPSTREAM": upstream, "BENCH_DETAIL": args.detail,
               "PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).parent), os.environ.get("PYTHONPATH"))))}
        script = write_lua(tmp)
        model = [*GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"]
        with process(model, fast_model_env(), f"http://127.0.0.1:{model_port}/health", tmp / "model.log"), \
                process([*GRANIAN, "--factory", "--port", str(port), "stages:app_from_env"], env,
                        f"http://127.0.0.1:{port}/healthz", tmp / "worker.log"):
            key = account_key(f"http://127.0.0.1:{port}")
            delay_ms = max(1, round(64 * 1000 / args.rate))
            for _ in range(args.runs):
                for prefix, token in (("", key), ("/relay", "")):
                    wrk(f"http://127.0.0.1:{port}{prefix}/v1/chat/completions", script, args.seconds, 64,
                        method="POST", key=token, delay_ms=delay_ms)
            found = httpx.get(f"http://127.0.0.1:{port}/stages", timeout=30).json()
    for name, steps in found.items():
        print(f"{name} ({steps.pop('calls')} calls), µs between marks, median and p99:")
        for step, (median, p99) in steps.items():
            print(f"  {step:40s} {median:8.1f} {p99:8.1f}")
    print(json.dumps(found))


if __name__ == "__main__":
    main()
