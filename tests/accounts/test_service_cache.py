"""The account service's credential cache: when a cached key expires under load, one query serves every
concurrent call (a real SQLite database, queries counted at the driver)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import event

from floodwall.accounts.activity import Client
from floodwall.accounts.passwords import Passwords
from floodwall.accounts.service import AccountService
from floodwall.db.engine import create_engine, sessionmaker, upgrade
from floodwall.principal import Principal


async def test_concurrent_misses_share_one_query(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    accounts = AccountService(sessionmaker(engine), Passwords("fast"), session_lifetime=3600, key_cache_ttl=60)
    client = Client("127.0.0.1", "test")
    user = await accounts.register("cache@example.com", "a long password", client)
    principal = Principal(user.id, user.email, user.created_at, False)
    _, secret = await accounts.create_key(principal, "k", client)
    queries = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
    found = await asyncio.gather(*[accounts.key_principal(secret) for _ in range(50)])
    assert all(p is not None and p.user_id == user.id for p in found)
    assert len([q for q in queries if "api_keys" in q]) == 1
    # cached now: no query at all
    assert await accounts.key_principal(secret) is not None
    assert len([q for q in queries if "api_keys" in q]) == 1
    assert accounts.cached_principal(secret, True)[0]
    await engine.dispose()
