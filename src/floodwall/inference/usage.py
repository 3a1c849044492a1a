"""Token usage, summed per principal, endpoint, model and outcome over a moment and written by one background
task, so the database stays off the response path and its writes do not grow with the calls made."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from floodwall import logs
from floodwall.background import cancel

# one call's usage: user_id, key_id, at, endpoint, model, prompt_tokens, completion_tokens, status
Record = dict[str, object]
# what calls share a row: user_id, key_id, endpoint, model, status
_Group = tuple[object, object, object, object, object]

log = logging.getLogger("floodwall.usage")


class UsageRecorder:
    """Calls of the same group within `interval` become one row (the usage table's `requests` counts them).

    Written `chunk` rows a transaction: building a statement's parameters runs on the event loop, about
    10 µs a row with SQLAlchemy, and a stall of a few milliseconds every interval is what set the p99 of
    every proxied call (bench/edge.py latency). A write costs the event loop about 2 ms of CPU whatever it
    holds (the session, the statements, the commit): once a second, not five times (at 100 calls/s that was
    0.15 ms a call).
    """

    # groups kept for a retry while the database is unreachable; beyond this new ones are dropped and logged
    MAX_PENDING = 100_000

    def __init__(self, record: Callable[[Sequence[dict[str, object]]], Awaitable[None]], interval: float = 1.0,
                 chunk: int = 100) -> None:
        self.record = record  # writes rows of the usage table (accounts/service.py's record_usage)
        self.interval = interval
        self.chunk = chunk
        self._pending: dict[_Group, Record] = {}
        self._ready = asyncio.Event()
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, record: Record) -> None:
        group = (record["user_id"], record["key_id"], record["endpoint"], record["model"], record["status"])
        row = self._pending.get(group)
        if row is None:
            if len(self._pending) >= self.MAX_PENDING:
                self._dropped += 1
                return
            self._pending[group] = {**record, "requests": record.get("requests", 1)}
        else:
            for field, added in (("requests", record.get("requests", 1)), ("prompt_tokens", record["prompt_tokens"]),
                                 ("completion_tokens", record["completion_tokens"])):
                total = row[field]  # (counted here, not by a helper: six calls on every call's end)
                row[field] = (total if isinstance(total, int) else 0) + (added if isinstance(added, int) else 0)
        self._ready.set()

    def __len__(self) -> int:
        """Rows waiting to be written."""
        return len(self._pending)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def stop(self) -> None:
        await cancel(self._task)
        await self.flush()

    async def flush(self) -> bool:
        """Write everything pending; False if the database refused (what was not written stays pending)."""
        self._ready.clear()
        rows, self._pending = list(self._pending.values()), {}
        if self._dropped:
            logs.event(log, "usage_dropped", logging.ERROR, calls=self._dropped, pending=len(rows))
            self._dropped = 0
        for start in range(0, len(rows), self.chunk):
            chunk = rows[start:start + self.chunk]
            try:
                await self.record(chunk)
            except Exception as exc:  # the database may be briefly away: keep serving, keep the rows, say so
                logs.event(log, "usage_write_failed", logging.ERROR, rows=len(rows) - start, error=repr(exc))
                for row in rows[start:]:
                    self.add(row)
                return False
        return True

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            await asyncio.sleep(self.interval)
            if not await self.flush():
                await asyncio.sleep(1.0)
