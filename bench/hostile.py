"""Issue 8, item 2: hostile clients. A fresh floodwall (default policy, memory state, SQLite, one granian
worker) in front of the simulated model; established users chat throughout (a call every 100 ms each), and
one attack at a time runs from other loopback addresses:

  slowloris      connections dribbling their headers a byte a second
  slow-body      sign-in posts dribbling a promised body a byte a second
  big-headers    requests carrying a 256 KiB header
  big-body       chat calls announcing a 64 MiB body and sending it
  pipelined      connections each writing thousands of tiny requests at once
  connections    thousands of connections opened and left idle
  vanishing      streamed chat calls whose clients hang up after the first bytes

For each: how long until floodwall cut the hostile connections off (or answered them), how many it still
held at the end, floodwall's memory (RSS of its processes), and the established users' success rate and
latency against the same users with no attack, measured in the same run.

    python bench/hostile.py [--seconds 12] [--only slowloris,...]

Writes bench/out/hostile.json. Traffic only goes to loopback addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from _common import account_key, process
from defense import ADMIN_TOKEN, OUT, established_keys, floodwall_env, model_command
from floodwall.server import free_port

# floodwall as `floodwall serve` runs it: granian with the product's own settings (header timeout, header size)
SERVE = ("import os, sys; from floodwall.config import Settings, SETTINGS_ENV; from floodwall.server import run, "
         "APP_FACTORY; run(APP_FACTORY, Settings.from_json(os.environ[SETTINGS_ENV]), '127.0.0.1', int(sys.argv[1]))")
ATTACKS = ("slowloris", "slow-body", "big-headers", "big-body", "pipelined", "connections", "vanishing")
CHAT = {"model": "floodwall-simulated-chat", "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 8}


@contextlib.contextmanager
def serving(tmp: Path) -> Iterator[str]:
    """A fresh floodwall (default policy, memory state, SQLite in `tmp`) in front of a fresh simulated
    model, served as `floodwall serve` serves it; yields its base URL."""
    model_port, port = free_port(), free_port()
    command, env = model_command(model_port)
    base = f"http://127.0.0.1:{port}"
    with process(command, env, f"http://127.0.0.1:{model_port}/health", tmp / "model.log"), \
            process([sys.executable, "-c", SERVE, str(port)], floodwall_env(tmp, f"http://127.0.0.1:{model_port}/v1"),
                    f"{base}/healthz", tmp / "floodwall.log"):
        yield base


def rss_mb(port: int) -> float:
    """The resident memory of the server started by `serving` on `port`: its main process and workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if entry.name.isdigit() and argv[1:2] == [b"-c"] and argv[-2:] == [str(port).encode(), b""]:
                pids.append(entry.name)
                children = Path(f"/proc/{entry.name}/task/{entry.name}/children").read_text().split()
                pids.extend(children)
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
            total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return total / 1024


def source(n: int) -> str:
    """The n-th attacking loopback address (127.20.0.0/16): none of them an established user's."""
    return f"127.20.{n // 250 % 250}.{n % 250 + 1}"


class Attack:
    """Connections opened from attacking addresses, and when each ended (server closed it, or answered)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.opened = 0
        self.refused = 0
        self.ended: list[float] = []  # seconds from the connection's start to the server's close or answer
        self.answers: dict[str, int] = {}

    async def connect(self, n: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            found = await asyncio.wait_for(asyncio.open_connection(self.host, self.port,
                                                                   local_addr=(source(n), 0)), 5)
        except (OSError, TimeoutError):
            self.refused += 1
            return None
        self.opened += 1
        return found

    async def watch(self, reader: asyncio.StreamReader, began: float) -> None:
        """Until the server closes the connection or answers: its status line counted."""
        try:
            line = await reader.readline()
        except (OSError, ConnectionError):
            line = b""
        status = line.split(b" ")[1].decode() if line.startswith(b"HTTP/") and b" " in line else "closed"
        self.answers[status] = self.answers.get(status, 0) + 1
        self.ended.append(time.monotonic() - began)

    def report(self, window: float) -> dict[str, Any]:
        ended = sorted(self.ended)
        return {"connections": self.opened, "refused_at_connect": self.refused, "ended": len(ended),
                "still_open": self.opened - len(ended), "answers": self.answers,
                "cut_off_s_p50": round(statistics.median(ended), 2) if ended else None,
                "cut_off_s_max": round(ended[-1], 2) if ended else None, "window_s": window}


async def send_watched(attack: Attack, n: int, head: bytes, chunks: list[bytes], pause: float,
                       stop: float) -> None:
    """Send `head`, then `chunks` with `pause` seconds before each, until the server closes the connection
    or answers, or `stop`."""
    pair = await attack.connect(n)
    if pair is None:
        return
    reader, writer = pair
    watcher = asyncio.ensure_future(attack.watch(reader, time.monotonic()))
    try:
        writer.write(head)
        for chunk in chunks:
            if watcher.done() or time.monotonic() > stop:
                break
            await asyncio.sleep(pause)
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 5)
        await asyncio.wait_for(asyncio.shield(watcher), max(0.1, stop - time.monotonic()))
    except (OSError, ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
        if not watcher.done():
            watcher.cancel()


async def dribble(attack: Attack, n: int, head: bytes, rest: bytes, stop: float) -> None:
    """Send `head`, then `rest` a byte a second."""
    await send_watched(attack, n, head, [bytes([byte]) for byte in rest], 1.0, stop)


async def slowloris(attack: Attack, stop: float, _: dict[str, Any]) -> None:
    head = f"GET / HTTP/1.1\r\nHost: {attack.host}\r\n".encode()
    await asyncio.gather(*(dribble(attack, n, head, b"X-Padding: " + b"a" * 500, stop) for n in range(300)))


async def slow_body(attack: Attack, stop: float, _: dict[str, Any]) -> None:
    head = (f"POST /auth/login HTTP/1.1\r\nHost: {attack.host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 10000\r\n\r\n").encode()
    await asyncio.gather(*(dribble(attack, n, head, b'{"email": "' + b"a" * 9000, stop) for n in range(100)))


async def big_headers(attack: Attack, stop: float, _: dict[str, Any]) -> None:
    data = (f"GET / HTTP/1.1\r\nHost: {attack.host}\r\nX-Big: ".encode() + b"b" * 256 * 1024 + b"\r\n\r\n")
    for round_ in range(10):
        await asyncio.gather(*(send_watched(attack, round_ * 5 + n, data, [], 0.0, stop) for n in range(5)))


async def big_body(attack: Attack, stop: float, figures: dict[str, Any]) -> None:
    size = 64 * 2**20
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {attack.host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {figures['attacker_key']}\r\nContent-Length: {size}\r\n\r\n").encode()
    chunks = [b"x" * 2**20] * 64
    await asyncio.gather(*(send_watched(attack, n, head, chunks, 0.0, stop) for n in range(20)))


async def pipelined(attack: Attack, stop: float, figures: dict[str, Any]) -> None:
    request = f"GET /healthz HTTP/1.1\r\nHost: {attack.host}\r\n\r\n".encode()
    per_connection = 5000
    answered = [0]

    async def one(n: int) -> None:
        pair = await attack.connect(n)
        if pair is None:
            return
        reader, writer = pair
        began = time.monotonic()
        tail = b""
        try:
            writer.write(request * per_connection)
            while time.monotonic() < stop:
                data = await asyncio.wait_for(reader.read(65536), max(0.1, stop - time.monotonic()))
                if not data:
                    break
                data = tail + data  # a status line may straddle two reads
                answered[0] += data.count(b"HTTP/1.1 ")
                tail = data[-8:]  # too short to hold a whole status line, so never counted twice
        except (OSError, ConnectionError, TimeoutError):
            pass
        finally:
            attack.ended.append(time.monotonic() - began)
            writer.close()

    await asyncio.gather(*(one(n) for n in range(8)))
    figures["pipelined_requests_sent"] = 8 * per_connection
    figures["pipelined_answers"] = answered[0]


async def connections(attack: Attack, stop: float, _: dict[str, Any]) -> None:
    held: list[asyncio.StreamWriter] = []

    async def one(n: int) -> None:
        pair = await attack.connect(n)
        if pair is None:
            return
        reader, writer = pair
        held.append(writer)
        await asyncio.wait_for(attack.watch(reader, time.monotonic()), max(0.1, stop - time.monotonic()))

    with contextlib.suppress(TimeoutError):
        await asyncio.gather(*(one(n) for n in range(4000)), return_exceptions=True)
    for writer in held:
        writer.close()


async def vanishing(attack: Attack, stop: float, figures: dict[str, Any]) -> None:
    """Streamed chat calls from a new account, each abandoned after its first bytes: the model's slots must
    come back (admission's in-flight count, read after the phase)."""
    key = figures["attacker_key"]
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 400}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {attack.host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    rounds = 0
    while time.monotonic() < stop - 3:

        async def one(n: int) -> None:
            pair = await attack.connect(n)
            if pair is None:
                return
            reader, writer = pair
            began = time.monotonic()
            try:
                writer.write(head + body)
                line = await asyncio.wait_for(reader.readline(), 10)
                status = line.split(b" ")[1].decode() if b" " in line else "closed"
                attack.answers[status] = attack.answers.get(status, 0) + 1
                await asyncio.wait_for(reader.read(200), 10)  # the first bytes of the stream, then gone
            except (OSError, ConnectionError, TimeoutError):
                pass
            finally:
                attack.ended.append(time.monotonic() - began)
                writer.transport.abort()

        await asyncio.gather(*(one(rounds * 20 + n) for n in range(20)))
        rounds += 1
        await asyncio.sleep(0.5)


async def users(base: str, keys: list[str], stop: float) -> list[tuple[int, float, str]]:
    """Established users, each a call every 100 ms from its own address: (status, seconds, reason) per call."""
    results: list[tuple[int, float, str]] = []

    async def one(i: int, key: str) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=f"127.9.{i}.1")
        async with httpx.AsyncClient(base_url=base, transport=transport, timeout=30,
                                     headers={"authorization": f"Bearer {key}"}) as client:
            while time.monotonic() < stop:
                began = time.monotonic()
                try:
                    answer = await client.post("/v1/chat/completions", json=CHAT)
                    status, reason = answer.status_code, answer.headers.get("x-floodwall-reason", "")
                except httpx.HTTPError as exc:
                    status, reason = 0, type(exc).__name__
                results.append((status, time.monotonic() - began, reason))
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - began)))

    await asyncio.gather(*(one(i, key) for i, key in enumerate(keys)))
    return results


def users_apart(base: str, keys: list[str], stop_in: float, results: Any) -> None:
    """`users` in a process of its own (the attackers' event loop must not be what slows them)."""
    results.put(asyncio.run(users(base, keys, time.monotonic() + stop_in)))


def summary(calls: list[tuple[int, float, str]]) -> dict[str, Any]:
    latencies = sorted(seconds for status, seconds, _ in calls if status == 200)
    ok = len(latencies)
    statuses: dict[str, int] = {}
    for status, _, reason in calls:
        name = f"{status} {reason}".strip()
        statuses[name] = statuses.get(name, 0) + 1
    return {"calls": len(calls), "success": round(ok / len(calls), 4) if calls else None, "statuses": statuses,
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None}


async def phase(base: str, keys: list[str], seconds: float,
                hostile: Callable[[Attack, float, dict[str, Any]], Awaitable[None]] | None,
                figures: dict[str, Any]) -> dict[str, Any]:
    address = urlsplit(base)
    port = address.port or 80
    stop = time.monotonic() + seconds
    attack = Attack(address.hostname or "127.0.0.1", port)
    peak = [rss_mb(port)]
    before = peak[0]

    async def sample() -> None:
        while time.monotonic() < stop + 1:
            peak[0] = max(peak[0], rss_mb(port))
            await asyncio.sleep(0.5)

    results: Any = multiprocessing.get_context("spawn").Queue()
    apart = multiprocessing.get_context("spawn").Process(target=users_apart,
                                                         args=(base, keys, stop - time.monotonic(), results))
    apart.start()
    tasks = [sample()]
    if hostile is not None:
        tasks.append(hostile(attack, stop, figures))
    await asyncio.gather(*tasks)
    calls = await asyncio.to_thread(results.get, True, seconds + 60)
    apart.join(10)
    found = {"users": summary(calls), "rss_mb_before": round(before, 1), "rss_mb_peak": round(peak[0], 1),
             "rss_mb_after": round(rss_mb(port), 1)}
    if hostile is not None:
        found["attack"] = attack.report(seconds)
    return found


def admission(base: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}/admin/api/admission", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    found: dict[str, Any] = answer.json()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--only", default=",".join(ATTACKS))
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name]
    unknown = set(chosen) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder, serving(Path(folder)) as base:
        keys = Path(established_keys(base, Path(folder))).read_text().split()[:4]
        # the attacker has an account too, a new one: it streams and hangs up, and sends a huge body
        figures: dict[str, Any] = {"attacker_key": account_key(base, "attacker@example.com", "127.20.250.250")}
        results["baseline"] = asyncio.run(phase(base, keys, args.seconds, None, figures))
        print(f"baseline: {results['baseline']}", flush=True)
        hostile = {"slowloris": slowloris, "slow-body": slow_body, "big-headers": big_headers,
                   "big-body": big_body, "pipelined": pipelined, "connections": connections,
                   "vanishing": vanishing}
        for name in chosen:
            # what a timeout should end is watched until past it (server.header_timeout 10 s, body_timeout 30 s)
            seconds = max(args.seconds, {"slowloris": 15.0, "slow-body": 40.0, "connections": 15.0}.get(name, 0.0))
            results[name] = asyncio.run(phase(base, keys, seconds, hostile[name], figures))
            if name == "vanishing":
                time.sleep(2)
                results[name]["admission_after"] = admission(base)
            if name == "pipelined":
                results[name]["pipelined"] = {k: figures.pop(k) for k in ("pipelined_requests_sent",
                                                                          "pipelined_answers")}
            print(f"{name}: {json.dumps(results[name])}", flush=True)
            time.sleep(2)  # what one attack left behind is not the next one's
    OUT.mkdir(exist_ok=True)
    (OUT / "hostile.json").write_text(json.dumps(results, indent=2))
    base_p95 = results["baseline"]["users"]["p95_ms"]
    print("\n| attack | hostile connections | cut off (p50 / max s) | still open | answers | RSS peak MB | "
          "users' success | users' p95 ms (x calm) |\n|---|---:|---|---:|---|---:|---:|---:|")
    for name in chosen:
        found = results[name]
        hostile_figures, users_figures = found["attack"], found["users"]
        ratio = (users_figures["p95_ms"] / base_p95) if base_p95 and users_figures["p95_ms"] else None
        print(f"| {name} | {hostile_figures['connections']} | {hostile_figures['cut_off_s_p50']} / "
              f"{hostile_figures['cut_off_s_max']} | {hostile_figures['still_open']} | {hostile_figures['answers']} | "
              f"{found['rss_mb_peak']} | {users_figures['success']} | {users_figures['p95_ms']}"
              f"{f' ({ratio:.2f}x)' if ratio else ''} |")
    print(f"\ncalm: users' success {results['baseline']['users']['success']}, p95 {base_p95} ms, "
          f"RSS {results['baseline']['rss_mb_peak']} MB")
    return 0


if __name__ == "__main__":
    os.chdir(Path(__file__).parent)
    sys.exit(main())
