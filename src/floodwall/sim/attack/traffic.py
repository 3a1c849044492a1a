"""Where the simulator's traffic comes from and goes to: a loopback target only, many loopback source
addresses, and one small HTTP client per source address."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import ipaddress
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import altcha
import httpx
import orjson

from floodwall.inference.http1 import ConnectionClosed, Pool


class TargetError(ValueError):
    """The target is not one the simulator may send traffic to."""


@dataclasses.dataclass(frozen=True)
class Target:
    url: str  # the service's base URL, without /v1
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise TargetError(f"the target must be an http:// URL, not {url!r}")
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise TargetError(f"cannot resolve {parts.hostname!r}: {exc}") from None
        for info in infos:
            if not ipaddress.ip_address(info[4][0]).is_loopback:
                # attack traffic never leaves the machine
                raise TargetError(f"{parts.hostname} is not a loopback address: the simulator only sends to "
                                  "127.0.0.0/8 or ::1")
        base = f"http://{parts.netloc}{parts.path.rstrip('/')}".removesuffix("/v1")
        return cls(base, parts.hostname, parts.port or 80)


class Sources:
    """Distinct loopback source addresses: 127.0.0.0/8 is all this machine's, so each is a different client
    to the target without any network set-up. Each population takes its own range."""

    def __init__(self) -> None:
        self._next = 1

    def take(self, count: int, own_networks: bool = False) -> list[str]:
        """`count` new addresses; with `own_networks`, each in a /24 of its own: people at home, where a bot
        farm's sources crowd a few hosting networks (and so meet the per-network limits)."""
        step = 256 if own_networks else 1
        first = -(-self._next // step) * step + (1 if own_networks else 0)
        self._next = first + count * step  # after a person, the next /24 starts fresh
        if self._next >= 2**22:
            raise ValueError("out of loopback source addresses")
        # 127.64.0.0/10: clear of 127.0.0.1, which the operator's own tools use
        return [str(ipaddress.IPv4Address((127 << 24) | (64 << 16) | n)) for n in range(first, self._next, step)]

    def take_network(self, count: int) -> list[str]:
        """`count` new addresses (at most 254) in one /24 of their own: people behind one shared address
        range, a carrier's NAT or an office."""
        if not 0 <= count <= 254:
            raise ValueError("a /24 holds at most 254 people here")
        first = self.take(1, own_networks=True)[0]  # the next take starts on the /24 after this one
        base = int(ipaddress.IPv4Address(first))
        return [str(ipaddress.IPv4Address(base + n)) for n in range(count)]


def raise_open_files_limit(wanted: int) -> int:
    """Thousands of sources hold thousands of sockets: raise the soft limit as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclasses.dataclass
class Reply:
    status: int  # 0: no HTTP answer (connection refused, reset, timed out)
    body: bytes
    headers: dict[str, str]
    latency: float
    error: str = ""

    def json(self) -> object:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    @property
    def code(self) -> str:
        """The error code of an OpenAI-shaped refusal, or ""."""
        return str(self._error().get("code") or "")

    @property
    def queue(self) -> dict[str, Any]:
        """The waiting room's answer (ticket, position, eta_seconds) in a queued refusal or from /auth/queue."""
        value = self.json()
        found = self._error().get("queue") or (value.get("queue") if isinstance(value, dict) else None)
        return found if isinstance(found, dict) else {}

    @property
    def challenge(self) -> dict[str, Any]:
        """The proof-of-work challenge a `challenge_required` refusal carries."""
        found = self._error().get("challenge")
        return found if isinstance(found, dict) else {}

    def _error(self) -> dict[str, Any]:
        value = self.json()
        error = value.get("error") if isinstance(value, dict) else None
        return error if isinstance(error, dict) else {}


class Client:
    """HTTP/1.1 from one source address, with keep-alive; `forwarded_for` sends X-Forwarded-For instead,
    for targets that trust the simulator as a proxy."""

    def __init__(self, target: Target, source: str, *, forwarded_for: bool = False, timeout: float = 30.0) -> None:
        self.source = source
        self.pool = Pool(target.url, connect_timeout=5.0, read_timeout=timeout, max_connections=4,
                         local_address=None if forwarded_for else source)
        self.forwarded = f"x-forwarded-for: {source}\r\n".encode() if forwarded_for else b""

    async def call(self, method: str, path: str, body: object = None, *, headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> Reply:
        lines = self.forwarded + b"user-agent: floodwall-attack/1\r\n"
        payload = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if payload is not None:
            lines += b"content-type: application/json\r\n"
        for name, value in (headers or {}).items():
            lines += f"{name}: {value}\r\n".encode("latin-1", "replace")
        started = time.monotonic()
        try:
            response = await self.pool.request(method, path, payload, lines)
            try:
                data = await response.read()
            finally:
                response.release()
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            return Reply(0, b"", {}, time.monotonic() - started, type(exc).__name__)
        named = {name.decode("latin-1"): value.decode("latin-1") for name, value in response.headers}
        return Reply(response.status, data, named, time.monotonic() - started)

    async def close(self) -> None:
        await self.pool.close()


def _solve(challenge: dict[str, Any]) -> tuple[str | None, float]:
    started = time.process_time()
    try:
        parsed = altcha.Challenge.from_dict(challenge)
        solution = altcha.solve_challenge(parsed, timeout=60)
    except (KeyError, TypeError, ValueError):
        return None, time.process_time() - started
    found = None if solution is None else altcha.Payload(parsed, solution).to_base64()
    return found, time.process_time() - started


_solver: concurrent.futures.ProcessPoolExecutor | None = None


async def solve_challenge(challenge: dict[str, Any]) -> tuple[str | None, float]:
    """Solve a sign-up challenge as ALTCHA's widget does: the form field's value (None when it could not be
    read or solved) and the CPU seconds it took. People solve theirs on their own machines; here one
    process beside the simulator does it for all of them, so that hashing never holds up the simulator's
    own clients (threads would, through the GIL)."""
    global _solver
    if _solver is None:
        _solver = concurrent.futures.ProcessPoolExecutor(max_workers=1)
    return await asyncio.get_running_loop().run_in_executor(_solver, _solve, challenge)


async def widget_solution(get: Callable[[str], Awaitable[bytes]]) -> str | None:
    """What a browser's sign-up form sends: when the page carries the proof-of-work widget, the widget solves
    a challenge while the person types, and the form sends the solution with its first try."""
    if b"<altcha-widget" not in await get("/register"):
        return None
    try:
        challenge = orjson.loads(await get("/auth/challenge"))
    except orjson.JSONDecodeError:
        return None
    return (await solve_challenge(challenge))[0] if isinstance(challenge, dict) else None


async def sign_up(web: httpx.AsyncClient, email: str, password: str, patience: float = 120.0) -> int:
    """Register as a person would, in a browser: solving the challenge, waiting in the queue or for a place
    in the trickle when the level asks for them. The final status."""

    async def get(path: str) -> bytes:
        return (await web.get(path)).content

    body: dict[str, Any] = {"email": email, "password": password}
    if solution := await widget_solution(get):
        body["altcha"] = solution
    deadline = time.monotonic() + patience
    while True:
        response = await web.post("/auth/register", json=body)
        reply = Reply(response.status_code, response.content, dict(response.headers), 0.0)
        if time.monotonic() >= deadline:
            return response.status_code
        if reply.code == "challenge_required":
            body["altcha"], _ = await solve_challenge(reply.challenge)
        elif reply.queue:
            body["ticket"] = reply.queue["ticket"]
            await asyncio.sleep(min(5.0, max(0.5, float(reply.queue.get("eta_seconds") or 1))))
        elif reply.code == "registration_busy" and response.status_code == 429:
            await asyncio.sleep(min(30.0, float(response.headers.get("retry-after") or 5)))
        else:
            return response.status_code
