"""Faults, for real: floodwall killed with SIGKILL during a sign-up wave and during streamed chats, and its
database and Redis taken away mid-run (the network path to them cut: a proxy in front of each that the
test stops and starts again). Acknowledged sign-ups survive whole; clients of a killed process hear so at
once; with a dependency away floodwall answers 503s where it needs it, keeps established users chatting
where it can, and recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from floodwall.db.engine import create_engine
from floodwall.server import free_port, wait_until_up
from tests.conftest import NO_LIMITS, PASSWORD, eventually, postgres_database

OPERATOR_TOKEN = "faults-token-0123456789-abcdefghijkl"  # admin.token: 32 characters at least

CHAT = {"model": "floodwall-simulated-chat", "messages": [{"role": "user", "content": "Tell me a story"}]}


class Serving:
    """`floodwall serve` in a session of its own, so that SIGKILL takes the whole process tree."""

    def __init__(self, tmp: Path, database: str, model_url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["serve", "--port", str(self.port), "--database", database, "--upstream", model_url]
        self.env = {**os.environ, "FLOODWALL_LOG_FORMAT": "json", "FLOODWALL_ACCOUNTS_PASSWORD_HASH_PROFILE": "fast",
                    "FLOODWALL_EDGE_POLICY": str(NO_LIMITS), "FLOODWALL_DEFENSE_LEVEL": "normal",
                    "FLOODWALL_DEFENSE_NEW_ACCOUNT_AGE": "0s", "FLOODWALL_ADMIN_TOKEN": OPERATOR_TOKEN,
                    **(env or {})}
        self.log = tmp / f"serve-{self.port}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "floodwall", *self.args], env=self.env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_up(f"{self.url}/healthz", timeout=60, process=self.popen)

    def kill(self) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(15)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def serving(tmp: Path, database: str, model_url: str, env: dict[str, str] | None = None) -> Iterator[Serving]:
    server = Serving(tmp, database, model_url, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'faults.db'}"
    else:
        with postgres_database() as url:
            yield url


async def accounts_as_stored(url: str) -> tuple[list[tuple[int, str, str]], set[int]]:
    """Every account row, and the accounts whose making was recorded, read straight from the database."""
    engine = create_engine(url)
    try:
        async with engine.connect() as db:
            users = [(row[0], row[1], row[2]) for row in await db.execute(
                sqlalchemy.text("SELECT id, email, password_hash FROM users"))]
            created = {row[0] for row in await db.execute(
                sqlalchemy.text("SELECT user_id FROM activity WHERE kind = 'account_created'"))}
    finally:
        await engine.dispose()
    return users, created


def test_acknowledged_sign_ups_survive_a_kill_9_and_none_is_half_made(database: str, model_url: str,
                                                                     tmp_path: Path) -> None:
    acknowledged: list[str] = []
    tried: list[str] = []
    stop = threading.Event()

    def wave(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for n in range(10_000):
                if stop.is_set():
                    return
                email = f"wave{worker}-{n}@example.com"
                tried.append(email)
                try:
                    answer = client.post("/auth/register", json={"email": email, "password": PASSWORD})
                except httpx.HTTPError:
                    return  # the server is gone
                if answer.status_code == 201:
                    acknowledged.append(email)

    with serving(tmp_path, database, model_url) as server:
        workers = [threading.Thread(target=wave, args=(w,)) for w in range(8)]
        for worker in workers:
            worker.start()
        time.sleep(2.0)
        server.kill()  # mid-wave: requests in flight, transactions open
        stop.set()
        for worker in workers:
            worker.join(15)
        assert len(acknowledged) >= 10, len(acknowledged)
        server.start()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for email in acknowledged:
                signed_in = client.post("/auth/login", json={"email": email, "password": PASSWORD})
                assert signed_in.status_code == 200, (email, signed_in.text)
    users, created = asyncio.run(accounts_as_stored(database))
    made = {email for _, email, _ in users}
    assert set(acknowledged) <= made
    assert made <= set(tried)  # nothing appeared that nobody asked for
    for user_id, email, password_hash in users:  # whole: a hash, and the record of its making
        assert password_hash and user_id in created, email


def test_streams_cut_by_a_kill_9_end_at_once_for_their_clients(model_url: str, tmp_path: Path) -> None:
    with serving(tmp_path, f"sqlite:///{tmp_path / 'streams.db'}", model_url) as server:
        with httpx.Client(base_url=server.url, timeout=10) as web:
            web.post("/auth/register", json={"email": "streamer@example.com", "password": PASSWORD})
            web.post("/auth/login", json={"email": "streamer@example.com", "password": PASSWORD})
            key = web.post("/account/keys", json={"name": "s"}).json()["key"]

        async def stream() -> tuple[int, float]:
            """Bytes read before the stream broke, and how long after the kill it broke."""
            read = 0
            async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                         headers={"authorization": f"Bearer {key}"}) as client:
                try:
                    async with client.stream("POST", "/v1/chat/completions",
                                             json={**CHAT, "stream": True, "max_tokens": 200}) as answer:
                        async for chunk in answer.aiter_bytes():
                            read += len(chunk)
                except httpx.HTTPError:
                    pass
            return read, time.monotonic() - killed_at[0]

        killed_at = [float("inf")]

        async def run() -> list[tuple[int, float]]:
            streams = [asyncio.create_task(stream()) for _ in range(6)]
            await asyncio.sleep(1.5)  # mid-stream: 200 tokens at 50 a second take 4 s
            killed_at[0] = time.monotonic()
            await asyncio.to_thread(server.kill)
            return await asyncio.gather(*streams)

        ended = asyncio.run(run())
        assert all(read > 0 for read, _ in ended), ended  # each had begun
        assert all(after < 3 for _, after in ended), ended  # and heard of the kill at once: no hang
        server.start()  # and the service comes back whole
        with httpx.Client(base_url=server.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as client:
            assert client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}).status_code == 200


class Cable:
    """A TCP proxy to a dependency (Redis, PostgreSQL) on a port of its own: `cut()` closes it and every
    connection through it, as a dead server or network would; `mend()` opens it again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.mend()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, upstream_writer))
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    def mend(self) -> None:
        async def start() -> None:
            self.server = await asyncio.start_server(self._connection, "127.0.0.1", self.port, reuse_address=True)
        self._call(start())

    def cut(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()
        self._call(stop())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def chat_calls(url: str, key: str, seconds: float, every: float = 0.1) -> list[int]:
    """An established user's chat calls, one every `every` seconds for `seconds`: their statuses."""
    statuses = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {key}"}) as client:
        while time.monotonic() < deadline:
            try:
                statuses.append(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2}).status_code)
            except httpx.HTTPError:
                statuses.append(0)
            time.sleep(every)
    return statuses


def signed_up_key(url: str, email: str) -> str:
    with httpx.Client(base_url=url, timeout=10) as web:
        assert web.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        assert web.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
        key: str = web.post("/account/keys", json={"name": "faults"}).json()["key"]
        return key


def test_redis_cut_mid_run_and_mended(model_url: str, tmp_path: Path) -> None:
    cable = Cable(6379)
    prefix = f"fwfaults-{os.getpid()}-{time.monotonic_ns()}:"
    # the default policy: limits are decided in Redis, and in the process while it is away
    env = {"FLOODWALL_STATE_URL": f"redis://127.0.0.1:{cable.port}/0?prefix={prefix}", "FLOODWALL_EDGE_POLICY": ""}
    try:
        with serving(tmp_path, f"sqlite:///{tmp_path / 'redis.db'}", model_url, env) as server:
            key = signed_up_key(server.url, "redis-cut@example.com")
            calm = chat_calls(server.url, key, 2, every=0.5)
            cable.cut()
            away = chat_calls(server.url, key, 5, every=0.5)
            with httpx.Client(base_url=server.url, timeout=10,
                              headers={"authorization": f"Bearer {OPERATOR_TOKEN}"}) as operator:
                refused = operator.post("/admin/api/bans", json={"target": "192.0.2.9", "duration": "1m"})
                cable.mend()
                back = chat_calls(server.url, key, 3, every=0.5)
                banned = operator.post("/admin/api/bans", json={"target": "192.0.2.9", "duration": "1m"})
            log = server.log.read_text()
    finally:
        cable.close()
    assert set(calm) == {200} and set(away) == {200} and set(back) == {200}, (calm, away, back)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "state_unavailable"
    assert banned.status_code == 201, banned.text  # shared state again, without a restart
    assert "redis_unreachable" in log and "redis_recovered" in log


def test_database_cut_mid_run_and_mended(model_url: str, tmp_path: Path) -> None:
    with postgres_database() as url:
        cable = Cable(5432)
        through = url.replace(":5432/", f":{cable.port}/") if ":5432/" in url else url
        assert through != url, url
        try:
            # a key's lookup is kept 1 s: the outage outlasts it, and the last answer serves on
            with serving(tmp_path, through, model_url, {"FLOODWALL_ACCOUNTS_KEY_CACHE_TTL": "1s"}) as server:
                key = signed_up_key(server.url, "db-cut@example.com")
                calm = chat_calls(server.url, key, 2)
                cable.cut()
                away = chat_calls(server.url, key, 4)
                with httpx.Client(base_url=server.url, timeout=30) as web:
                    sign_in = web.post("/auth/login", json={"email": "db-cut@example.com", "password": PASSWORD})
                    stranger = web.post("/v1/chat/completions", json=CHAT,
                                        headers={"authorization": "Bearer fw_not-a-key-seen-before"})
                    page = web.post("/auth/login", data={"email": "db-cut@example.com", "password": PASSWORD},
                                    headers={"accept": "text/html", "origin": server.url})
                    status = web.get("/status")
                cable.mend()
                time.sleep(1)
                back = chat_calls(server.url, key, 3)
                with httpx.Client(base_url=server.url, timeout=30) as web:
                    again = web.post("/auth/login", json={"email": "db-cut@example.com", "password": PASSWORD})
                    # the calls made while the database was away were kept and written when it came back
                    counted = eventually(lambda: _counted(web, len(calm) + len(away) + len(back)))
        finally:
            cable.close()
    assert set(calm) == {200} and set(back) == {200}, (calm, back)
    assert set(away) == {200}, away  # a known key chats on while the database is away
    assert sign_in.status_code == 503 and sign_in.json()["error"]["code"] == "database_unavailable", sign_in.text
    assert sign_in.headers["retry-after"] == "5" and sign_in.headers["x-floodwall-reason"] == "database_unavailable"
    assert stranger.status_code == 503 and stranger.json()["error"]["code"] == "database_unavailable"
    assert page.status_code == 503 and "text/html" in page.headers["content-type"]  # a page for browsers
    assert status.status_code == 200
    assert again.status_code == 200, again.text
    assert counted == len(calm) + len(away) + len(back)


def _counted(web: httpx.Client, expected: int) -> int:
    """The account's recorded calls once they reach `expected` (0 until then)."""
    requests: int = web.get("/account/usage").json()["requests"]
    return requests if requests >= expected else 0
