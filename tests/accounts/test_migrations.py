"""The Alembic migrations build exactly the tables the models declare, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from floodwall.accounts import models as _account_models  # noqa: F401  (their tables join Base.metadata)
from floodwall.db import tables as _shared_tables  # noqa: F401
from floodwall.db.base import Base
from floodwall.db.engine import create_engine, upgrade
from floodwall.status import models as _status_models  # noqa: F401
from tests.conftest import postgres_database


def _differences(url: str) -> list[object]:
    upgrade(url)

    def compare(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async def run() -> list[object]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_match_the_models(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        assert _differences(f"sqlite:///{tmp_path / 'm.db'}") == []
    else:
        with postgres_database() as url:
            assert _differences(url) == []
