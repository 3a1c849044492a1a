"""Real processes over real HTTP: `floodwall model` as the model server (the one test double, for what
lies outside the product) and `floodwall serve` in front of it, on SQLite and on PostgreSQL.

PostgreSQL: FLOODWALL_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test) names a server
where each test session creates, and then drops, a database of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from floodwall.server import free_port, wait_until_up

# the shared corpora (../shared/corpora beside the repository, or where FLOODWALL_CORPORA says: .ci/run sets it
# for a clone elsewhere on the machine)
CORPORA = Path(os.environ.get("FLOODWALL_CORPORA") or Path(__file__).resolve().parents[2] / "shared" / "corpora")
POSTGRES = os.environ.get("FLOODWALL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PASSWORD = "correct horse battery staple"
NO_LIMITS = Path(__file__).with_name("data") / "no_limits.toml"
# under coverage (docs/development.md), the floodwall processes the tests start write their data beside the
# suite's, whatever folder they run in, so that it is combined with it
os.environ.setdefault("COVERAGE_FILE", str(Path(__file__).resolve().parent.parent / ".coverage"))


class Clock:
    """A clock the test moves, for the parts that take one."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, health: str) -> None:
        self.log = log
        self.health = health
        with log.open("wb") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "floodwall", *args], env={**os.environ, **env},
                                          stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_up(health, timeout=60, process=self.popen)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{args[0]} did not start:\n{log.read_text()[-4000:]}") from None

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()


@contextlib.contextmanager
def model_process(tmp: Path, **settings: object) -> Iterator[str]:
    """A simulated model server; yields its /v1 base URL."""
    port = free_port()
    env = {"FLOODWALL_LOG_FORMAT": "json", **{f"FLOODWALL_MODEL_{k.upper()}": str(v) for k, v in settings.items()}}
    process = Process(["model", "--port", str(port)], env, tmp / f"model-{port}.log",
                      f"http://127.0.0.1:{port}/health")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.stop()


@contextlib.contextmanager
def floodwall_process(tmp: Path, database: str, upstream: str | None, env: dict[str, str] | None = None,
                      args: tuple[str, ...] = ()) -> Iterator[str]:
    """`floodwall serve`; yields its base URL."""
    port = free_port()
    base_env = {"FLOODWALL_LOG_FORMAT": "json", "FLOODWALL_ACCOUNTS_PASSWORD_HASH_PROFILE": "fast",
                "FLOODWALL_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "FLOODWALL_UPSTREAM_RETRY_AFTER": "2", "FLOODWALL_EDGE_POLICY": str(NO_LIMITS)}
    command = ["serve", "--port", str(port), "--database", database, *args]
    if upstream:
        command += ["--upstream", upstream]
    process = Process(command, {**base_env, **(env or {})}, tmp / f"serve-{port}.log",
                      f"http://127.0.0.1:{port}/healthz")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


@contextlib.contextmanager
def default_policy_process(tmp: Path, model_url: str, state: str, env: dict[str, str]) -> Iterator[str]:
    """floodwall with the default edge policy, its state in memory or in the real Redis (a fresh prefix)."""
    url = "memory://" if state == "memory" else f"redis://127.0.0.1:6379/0?prefix=fwtest-{secrets.token_hex(4)}:"
    env = {"FLOODWALL_EDGE_POLICY": "", "FLOODWALL_DEFENSE_LEVEL": "normal", "FLOODWALL_STATE_URL": url, **env}
    with floodwall_process(tmp, f"sqlite:///{tmp / 'floodwall.db'}", model_url, env=env) as base:
        yield base


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    import asyncio

    import asyncpg

    server = make_url(POSTGRES)
    name = f"floodwall_test_{secrets.token_hex(4)}"
    admin_dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(admin_dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with model_process(tmp_path_factory.mktemp("model"), slots=8, tokens_per_second=400, reply_tokens=12,
                       first_token_delay=0.01, queue_size=64) as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'floodwall.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="session")
def base_url(database_url: str, model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # 127.0.0.2 stands in for a TLS terminator in front of floodwall (see test_cookie_secure_behind_https)
    with floodwall_process(tmp_path_factory.mktemp("serve"), database_url, model_url,
                           env={"FLOODWALL_SERVER_TRUSTED_PROXIES": "127.0.0.2/32"}) as url:
        yield url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


class Account:
    """A registered, signed-in account: `web` carries its session cookie."""

    def __init__(self, base_url: str) -> None:
        self.email = f"user-{secrets.token_hex(6)}@example.com"
        self.password = PASSWORD
        self.base_url = base_url
        self.web = httpx.Client(base_url=base_url, timeout=30, headers={"user-agent": "floodwall-tests/1.0"})
        created = self.web.post("/auth/register", json={"email": self.email, "password": self.password})
        assert created.status_code == 201, created.text
        self.id: int = created.json()["user"]["id"]
        signed_in = self.web.post("/auth/login", json={"email": self.email, "password": self.password})
        assert signed_in.status_code == 200, signed_in.text

    def new_key(self, name: str = "test") -> str:
        response = self.web.post("/account/keys", json={"name": name})
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    def close(self) -> None:
        self.web.close()


@pytest.fixture
def account(base_url: str) -> Iterator[Account]:
    created = Account(base_url)
    yield created
    created.close()


@pytest.fixture
def api_key(account: Account) -> str:
    return account.new_key()


def solve(challenge: dict[str, Any]) -> str:
    """What ALTCHA's widget puts in a sign-up form's `altcha` field for this challenge."""
    import altcha

    parsed = altcha.Challenge.from_dict(challenge)
    solution = altcha.solve_challenge(parsed, timeout=60)
    assert solution is not None
    return altcha.Payload(parsed, solution).to_base64()


def solved_challenge(web: httpx.Client) -> str:
    """A sign-up's `altcha` field: a challenge fetched by this client, solved."""
    return solve(web.get("/auth/challenge").json())


def eventually(check: Callable[[], Any], seconds: float = 15.0) -> Any:
    """What `check` returns once it is truthy, or its last answer after `seconds`: for what a background
    task (a refresh, a writer) does a moment after the request that caused it."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
