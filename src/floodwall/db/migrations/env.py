"""Alembic environment: runs the migrations over the async engine floodwall uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from floodwall.db.base import Base
from floodwall.db.engine import create_engine

config = context.config
# the migrations are written by hand, so upgrades need no metadata; the areas' tables join Base.metadata when
# their modules are imported (tests/accounts/test_migrations.py imports them all to compare)
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_engine(config.attributes["database_url"])
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("floodwall runs migrations online only: floodwall db upgrade")
asyncio.run(_main())
