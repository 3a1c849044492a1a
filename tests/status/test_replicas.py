"""Two replicas sharing Redis and PostgreSQL: one automatic incident, not two; and the status page goes on
answering from memory when the database is gone (it says its incidents may be old)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import eventually, floodwall_process, postgres_database

TOKEN = "admin-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def replicas(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    tmp: Path = tmp_path_factory.mktemp("replicas")
    state = f"redis://127.0.0.1:6379/0?prefix=fwtest-{secrets.token_hex(4)}:"
    env = {"FLOODWALL_EDGE_POLICY": "", "FLOODWALL_STATE_URL": state, "FLOODWALL_DEFENSE_LEVEL": "normal",
           "FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_STATUS_REFRESH_INTERVAL": "0.3s",
           "FLOODWALL_STATUS_RESOLVE_AFTER": "1s", "FLOODWALL_SERVER_SECRET_KEY": "k" * 40}
    for replica in ("a", "b"):
        (tmp / replica).mkdir()
    with postgres_database() as database, floodwall_process(tmp / "a", database, model_url, env=env) as a, \
            floodwall_process(tmp / "b", database, model_url, env=env) as b:
        yield a, b, database


def incidents(base: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{base}/api/v2/incidents.json", timeout=10).json()["incidents"]
    return found


def put_level(base: str, level: str) -> None:
    answer = httpx.put(f"{base}/admin/api/level", json={"level": level, "reason": "replica test"},
                       headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text


def test_one_automatic_incident_for_two_replicas(replicas: tuple[str, str, str]) -> None:
    a, b, _ = replicas
    put_level(a, "under_attack")
    assert eventually(lambda: incidents(a) and incidents(b) and incidents(b)[0]["status"] == "identified")
    time.sleep(1.5)  # several refreshes of both: still one
    assert len(incidents(a)) == 1 and incidents(a) == incidents(b)
    put_level(b, "normal")
    assert eventually(lambda: incidents(a)[0]["status"] == "resolved")
    time.sleep(1.0)
    statuses = [u["status"] for u in incidents(b)[0]["incident_updates"]]
    assert statuses == ["resolved", "monitoring", "identified"], statuses


def test_the_page_outlives_the_database(replicas: tuple[str, str, str]) -> None:
    a, b, database = replicas
    before = incidents(a)
    url = make_url(database)

    async def drop() -> None:
        connection = await asyncpg.connect(url.set(drivername="postgresql", database="postgres")
                                           .render_as_string(hide_password=False))
        try:
            await connection.execute(f'DROP DATABASE "{url.database}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())

    def stale(base: str) -> bool:
        return bool(httpx.get(f"{base}/api/v2/summary.json", timeout=10).json()["floodwall"]["incidents_stale"])

    assert eventually(lambda: stale(a) and stale(b))
    page = httpx.get(f"{a}/status", timeout=10)
    assert page.status_code == 200 and "may be a little old" in page.text
    assert incidents(a) == before  # the last incidents read, still shown
    put_level(a, "elevated")  # the level lives in Redis: live statuses go on without the database
    try:
        def registration(base: str) -> str:
            summary = httpx.get(f"{base}/api/v2/summary.json", timeout=10).json()
            return str({c["id"]: c["status"] for c in summary["components"]}["registration"])

        assert eventually(lambda: registration(b) == "degraded_performance")
    finally:
        put_level(a, "normal")
