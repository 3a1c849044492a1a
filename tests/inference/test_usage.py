"""Usage recording: the calls of a moment by one principal to one endpoint and model with one outcome share a
row, their tokens summed, on SQLite and PostgreSQL; what the database refuses is kept and written later."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

import pytest
from sqlalchemy import select

from floodwall.accounts.activity import Client
from floodwall.accounts.passwords import Passwords
from floodwall.accounts.service import AccountService
from floodwall.db.base import utcnow
from floodwall.db.engine import create_engine, sessionmaker, upgrade
from floodwall.db.tables import Usage
from floodwall.inference.usage import Record, UsageRecorder
from floodwall.principal import Principal

CLIENT = Client("127.0.0.1", "test")


def call(principal: Principal, key_id: int | None, prompt: int, completion: int, status: str = "ok") -> Record:
    return {"user_id": principal.user_id, "key_id": key_id, "at": utcnow(), "endpoint": "chat/completions",
            "model": "m", "prompt_tokens": prompt, "completion_tokens": completion, "status": status}


async def signed_up(accounts: AccountService) -> tuple[Principal, int]:
    user = await accounts.register(f"usage-{secrets.token_hex(4)}@example.com", "a long password", CLIENT)
    principal = Principal(user.id, user.email, user.created_at, False)
    key, _ = await accounts.create_key(principal, "k", CLIENT)
    return principal, key.id


async def test_calls_of_a_moment_share_a_row(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    accounts = AccountService(sessionmaker(engine), Passwords("fast"), session_lifetime=3600)
    principal, key_id = await signed_up(accounts)
    recorder = UsageRecorder(accounts.record_usage, chunk=2)  # two transactions for the three rows
    for prompt, completion in ((10, 5), (20, 6), (30, 7)):
        recorder.add(call(principal, key_id, prompt, completion))
    recorder.add(call(principal, None, 4, 2))  # the web chat: no key
    recorder.add(call(principal, key_id, 8, 0, status="cancelled"))
    assert await recorder.flush()
    async with accounts.db() as db:
        rows = (await db.execute(select(Usage).where(Usage.user_id == principal.user_id)
                                 .order_by(Usage.id))).scalars().all()
    assert [(r.key_id, r.status, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        (key_id, "ok", 3, 60, 18), (None, "ok", 1, 4, 2), (key_id, "cancelled", 1, 8, 0)]
    assert await accounts.usage_totals(principal) == {"requests": 5, "prompt_tokens": 72, "completion_tokens": 20}
    [(_, prompt, completion)] = await accounts.list_keys(principal)
    assert (prompt, completion) == (68, 18)
    assert await recorder.flush()  # nothing pending: nothing written twice
    assert (await accounts.usage_totals(principal))["requests"] == 5
    await engine.dispose()


async def test_a_keys_last_use_is_written_at_most_once_a_minute(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    accounts = AccountService(sessionmaker(engine), Passwords("fast"), session_lifetime=3600)
    principal, key_id = await signed_up(accounts)

    async def last_used() -> dict[int, object]:
        return {key.id: key.last_used_at for key, _, _ in await accounts.list_keys(principal)}

    await accounts.record_usage([call(principal, key_id, 1, 1)])
    first = (await last_used())[key_id]
    assert first is not None
    other, _ = await accounts.create_key(principal, "other", CLIENT)
    await accounts.record_usage([call(principal, key_id, 1, 1), call(principal, other.id, 1, 1)])
    seen = await last_used()
    assert seen[key_id] == first  # within the minute: not written again
    assert seen[other.id] is not None  # a key not written yet is, at once
    assert (await accounts.usage_totals(principal))["requests"] == 3  # the usage itself, every time
    await engine.dispose()


async def test_what_the_database_refuses_is_written_when_it_is_back(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path}/usage.db"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    accounts = AccountService(sessionmaker(engine), Passwords("fast"), session_lifetime=3600)
    principal, key_id = await signed_up(accounts)
    # a PostgreSQL server nobody listens for: the database is away
    away_engine = create_engine("postgresql://floodwall@127.0.0.1:9/none")
    away = AccountService(sessionmaker(away_engine), Passwords("fast"), session_lifetime=3600)
    recorder = UsageRecorder(away.record_usage)
    recorder.MAX_PENDING = 2
    recorder.add(call(principal, key_id, 10, 5))
    recorder.add(call(principal, None, 3, 1))
    with caplog.at_level(logging.ERROR, "floodwall.usage"):
        assert not await recorder.flush()
        recorder.add(call(principal, key_id, 20, 5))  # joins a kept row
        recorder.add(call(principal, key_id, 1, 1, status="cancelled"))  # a third group: beyond the bound
        recorder.record = accounts.record_usage  # the database is back
        assert await recorder.flush()
    assert await accounts.usage_totals(principal) == {"requests": 3, "prompt_tokens": 33, "completion_tokens": 11}
    events = [record.getMessage() for record in caplog.records]
    assert events.count("usage_write_failed") == 1 and events.count("usage_dropped") == 1
    await engine.dispose()
    await away_engine.dispose()
