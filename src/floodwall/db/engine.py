"""Engines for SQLite (the embedded default) and PostgreSQL, and running the Alembic migrations."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as DbSession
from starlette.requests import Request
from starlette.responses import Response

from floodwall import logs
from floodwall.errors import ApiError, error_response, log_refusal, on_unexpected

log = logging.getLogger("floodwall.database")
MIGRATIONS = Path(__file__).with_name("migrations")


def async_url(url: str) -> URL:
    """sqlite:///x and postgresql://... as written by operators, with the async drivers we ship."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached (refused, reset, timed out, its connection lost),
    rather than that a statement went wrong."""
    if isinstance(error, (OSError, exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError)):
        return True
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


def unavailable() -> ApiError:
    return ApiError(503, "The account database is unreachable; try again shortly.", "database_unavailable",
                    retry_after=5)


async def on_database_error(request: Request, error: Exception) -> Response:
    """The database away: what needs it answers 503 with Retry-After (a page for browsers), not a 500."""
    if not unreachable(error):
        return await on_unexpected(request, error)
    logs.event(log, "database_unavailable", logging.ERROR, path=request.url.path, error=repr(error))
    refusal = unavailable()
    log_refusal(request, refusal)
    return error_response(request.scope, refusal)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers and one writer work at once across worker processes; busy_timeout waits
    # for the write lock instead of failing with "database is locked"
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        if target.database and target.database != ":memory:":
            Path(target.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(target)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(target, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[DbSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic). Safe to run at every start; call it outside an event loop."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    command.upgrade(config, revision)
