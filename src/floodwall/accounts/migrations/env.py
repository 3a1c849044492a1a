"""Alembic environment: runs the migrations over the async engine floodwall uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from floodwall.accounts.database import create_engine
from floodwall.accounts.models import Base
from floodwall.status import models as _status_models  # noqa: F401  (their tables join Base.metadata)

config = context.config
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
