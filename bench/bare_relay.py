"""A bare ASGI relay to the model server and nothing else (no gate, routing, checks or admission), with
either HTTP client for the hop: floodwall's own (inference/http1.py, `ours`) or aiohttp's. It serves two
purposes:

  the floor of bench/edge.py's latency part: what floodwall adds above this relay is its own logic
  the client's A/B (issue 22): both relays, the same paced load, interleaved runs; CPU per call (the
      relay's process tree, from /proc) and added latency over calling the model directly

    python bench/bare_relay.py [--client ours,aiohttp] [--runs 5] [--duration 8] [--rate 500]

Needs wrk (apt install wrk). Writes bench/out/bare_relay.json. As an app: BENCH_CLIENT=ours|aiohttp and
BENCH_UPSTREAM (the model server's /v1 URL).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8000/v1")
CLIENT = os.environ.get("BENCH_CLIENT", "ours")
HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}
STREAM = ('{"model":"floodwall-simulated-chat","messages":[{"role":"user","content":"Hello, how are you?"}],'
          '"max_tokens":32,"stream":true}')


class Ours:
    def __init__(self) -> None:
        from floodwall.inference.http1 import Pool

        self.pool = Pool(UPSTREAM, connect_timeout=5, read_timeout=60, max_connections=1024)
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()).encode()

    async def relay(self, path: str, body: bytes, send: Any) -> None:
        response = await self.pool.request("POST", path, body, self.headers)
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(b"content-type", response.content_type.encode())]})
            async for chunk in response:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            response.release()

    async def close(self) -> None:
        await self.pool.close()


class Aiohttp:
    def __init__(self) -> None:
        import aiohttp

        # as floodwall's pool: up to 1024 keep-alive connections, no overall timeout (streams last), 60 s reads
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=4.0),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=60), auto_decompress=False)

    async def relay(self, path: str, body: bytes, send: Any) -> None:
        async with self.session.post(UPSTREAM + path, data=body, headers=HEADERS) as response:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(b"content-type", response.content_type.encode())]})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def close(self) -> None:
        await self.session.close()


_client: Ours | Aiohttp | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _client
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _client = Aiohttp() if CLIENT == "aiohttp" else Ours()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _client is not None:
                    await _client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert _client is not None
    # read as floodwall reads it (bodies.receive_body): up to the declared length, not the server's last, empty
    # message (a hop through granian's I/O thread): the floor is the best hop, not a slower one
    declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
    length = int(declared) if declared is not None else -1
    body, size = [], 0
    while True:
        message = await receive()
        body.append(message.get("body", b""))
        size += len(body[-1])
        if not message.get("more_body") or size == length:
            break
    await _client.relay(scope["path"].removeprefix("/v1"), b"".join(body), send)


# the A/B


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of process `root` and its descendants (granian runs a worker process)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(times.get(pid, 0.0) for pid in tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", default="ours,aiohttp", help="the relays to compare, interleaved")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rate", type=int, default=500, help="offered calls a second over 64 connections")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import subprocess

    from _common import CHAT, GRANIAN, fast_model_env, process, write_lua, wrk
    from floodwall.server import free_port, wait_until_up

    clients = args.client.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="fw-relay-"))
    script = write_lua(tmp)
    model_port = free_port()
    upstream = f"http://127.0.0.1:{model_port}/v1"
    model_cmd = [*GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"]
    ports = {name: free_port() for name in clients}
    delay_ms = max(1, round(64 * 1000 / args.rate))
    results: dict[str, Any] = {"rate": args.rate, "runs": args.runs, "duration_s": args.duration}
    with process(model_cmd, fast_model_env(), f"http://127.0.0.1:{model_port}/health", tmp / "model.log"):
        relays = []
        for name in clients:
            env = {"PYTHONPATH": str(Path(__file__).parent), "BENCH_UPSTREAM": upstream, "BENCH_CLIENT": name}
            command = [*GRANIAN, "--port", str(ports[name]), "bare_relay:app"]
            log = (tmp / f"{name}.log").open("wb")
            proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
            relays.append(proc)
        try:
            for name, proc in zip(clients, relays, strict=True):
                wait_until_up(f"http://127.0.0.1:{ports[name]}/health", timeout=60, process=proc, expect=404)
            pids = dict(zip(clients, (p.pid for p in relays), strict=True))
            for kind, body in (("whole", CHAT), ("stream", STREAM)):
                rows: dict[str, list[dict[str, float]]] = {name: [] for name in ["direct", *clients]}
                for _ in range(args.runs):  # interleaved: the machine's noise falls on all alike
                    for name in ["direct", *clients]:
                        port = model_port if name == "direct" else ports[name]
                        before = _tree_cpu(pids[name]) if name in pids else 0.0
                        row = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", script, args.duration, 64,
                                  method="POST", delay_ms=delay_ms, body=body)
                        if name in pids:
                            row["cpu_ms_per_call"] = (_tree_cpu(pids[name]) - before) * 1000 / row["requests"]
                        rows[name].append(row)
                results[kind] = _summary(rows, clients)
        finally:
            for proc in relays:
                proc.terminate()
                proc.wait(20)
    out = Path(__file__).with_name("out")
    out.mkdir(exist_ok=True)
    (out / "bare_relay.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def _summary(rows: dict[str, list[dict[str, float]]], clients: list[str]) -> dict[str, Any]:
    direct = rows["direct"]
    summary: dict[str, Any] = {"direct": {"p50_ms": statistics.median(r["p50_ms"] for r in direct),
                                          "p99_ms": statistics.median(r["p99_ms"] for r in direct)}}
    for name in clients:
        runs = rows[name]
        # each run's added latency against the direct run beside it
        added50 = [r["p50_ms"] - d["p50_ms"] for r, d in zip(runs, direct, strict=True)]
        added99 = [r["p99_ms"] - d["p99_ms"] for r, d in zip(runs, direct, strict=True)]
        cpu = [r["cpu_ms_per_call"] for r in runs]
        summary[name] = {
            "cpu_ms_per_call": {"median": round(statistics.median(cpu), 4), "runs": [round(c, 4) for c in cpu]},
            "added_p50_ms": {"median": round(statistics.median(added50), 3), "runs": [round(a, 3) for a in added50]},
            "added_p99_ms": {"median": round(statistics.median(added99), 3), "runs": [round(a, 3) for a in added99]},
            "rps": round(statistics.median(r["rps"] for r in runs), 1),
            "non_2xx": sum(r["non_2xx"] for r in runs),
        }
    return summary


if __name__ == "__main__":
    main()
