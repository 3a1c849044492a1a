"""Token usage, written in batches by one background task so the database stays off the response path."""

from __future__ import annotations

import asyncio
import logging

from floodwall import logs
from floodwall.accounts.service import AccountService
from floodwall.background import cancel

# one row of the usage table: user_id, key_id, at, endpoint, model, prompt_tokens, completion_tokens, status
Record = dict[str, object]

log = logging.getLogger("floodwall.usage")


class UsageRecorder:
    # records kept for a retry while the database is unreachable; beyond this they are dropped and logged
    MAX_PENDING = 100_000

    def __init__(self, accounts: AccountService, interval: float = 0.2, batch: int = 500) -> None:
        self.accounts = accounts
        self.interval = interval
        self.batch = batch
        self._queue: asyncio.Queue[Record] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def add(self, record: Record) -> None:
        self._queue.put_nowait(record)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def stop(self) -> None:
        await cancel(self._task)
        await self.flush()

    async def flush(self) -> None:
        while not self._queue.empty():
            if not await self._write(self._take([])):
                return

    def _take(self, pending: list[Record]) -> list[Record]:
        while not self._queue.empty() and len(pending) < self.batch:
            pending.append(self._queue.get_nowait())
        return pending

    async def _write(self, records: list[Record]) -> bool:
        try:
            await self.accounts.record_usage(records)
            return True
        except Exception as exc:  # the database may be briefly away: keep serving, keep the records, say so
            logs.event(log, "usage_write_failed", logging.ERROR, records=len(records), error=repr(exc))
            if self._queue.qsize() < self.MAX_PENDING:
                for record in records:
                    self._queue.put_nowait(record)
            return False

    async def _run(self) -> None:
        while True:
            pending = [await self._queue.get()]
            await asyncio.sleep(self.interval)
            if not await self._write(self._take(pending)):
                await asyncio.sleep(1.0)
