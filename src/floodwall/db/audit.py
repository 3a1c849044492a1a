"""The audit log: every level change, ban, list entry, incident and operator action. Each is a JSON log line
at once (logger `floodwall.db.audit`; `log.audit_file` copies them to a file of their own) and a row in the
database, written in the background in batches, so that a slow or absent database never holds up a ban
or a level change (the log line still has it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from floodwall import logs
from floodwall.background import cancel
from floodwall.db.tables import AuditEvent

log = logging.getLogger("floodwall.db.audit")
MAX_PENDING = 10_000  # rows waiting for the database; beyond, they are in the log only
BATCH = 500


class Audit:
    def __init__(self, db: async_sessionmaker[AsyncSession] | None) -> None:
        self.db = db
        self.dropped = 0
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(MAX_PENDING)
        self._task: asyncio.Task[None] | None = None

    def record(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        """Log one action now and queue its row; never waits and never fails the action."""
        logs.event(log, "audit", logging.WARNING if action.startswith(("level.", "ban.")) else logging.INFO,
                   actor=actor, action=action, target=target, **detail)
        row = AuditEvent(at=dt.datetime.now(dt.UTC), actor=actor[:100], action=action[:60], target=str(target)[:200],
                         detail=json.dumps(detail, default=str))
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name="audit-writer")

    async def stop(self) -> None:
        await cancel(self._task)
        await self._flush()  # what was queued at shutdown still lands

    async def _write(self) -> None:
        while True:
            first = await self._queue.get()
            await self._flush([first])

    async def _flush(self, rows: list[AuditEvent] | None = None) -> None:
        rows = rows or []
        while not self._queue.empty() and len(rows) < BATCH:
            rows.append(self._queue.get_nowait())
        if not rows or self.db is None:
            return
        try:
            async with self.db() as db, db.begin():
                db.add_all(rows)
        except Exception as exc:  # the database is away: the rows are in the log
            logs.event(log, "audit_not_stored", logging.WARNING, rows=len(rows), error=repr(exc))

    async def recent(self, limit: int = 100, action: str = "") -> list[dict[str, Any]]:
        """The latest actions, newest first (`action`: only those starting with it, like "ban.")."""
        if self.db is None:
            return []
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if action:
            query = query.where(AuditEvent.action.startswith(action))
        async with self.db() as db:
            rows = (await db.scalars(query)).all()
        return [{"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "action": r.action, "target": r.target,
                 "detail": json.loads(r.detail or "{}")} for r in rows]
