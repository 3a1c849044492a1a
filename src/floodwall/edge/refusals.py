"""Explaining refusals without a log line per request: during a flood that would cost more than the
refusal itself. The first refusal of each (reason, address) in a window is logged in full; the rest are
counted, and every window ends with one summary line of counts per reason and the top addresses.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from floodwall import logs

log = logging.getLogger("floodwall.edge")


class RefusalLog:
    def __init__(self, window: float = 10.0, max_pairs: int = 10_000, event: str = "refused") -> None:
        self.event = event  # also for requests flagged and let through: "flagged", status None
        self.window = window
        self.max_pairs = max_pairs
        self.counts: dict[tuple[str, str], int] = {}
        self.unlisted = 0
        self.total = 0
        self._window_end = 0.0
        self._flusher: asyncio.TimerHandle | None = None

    def record(self, reason: str, address: str, status: int | None, klass: str, level: str, tier: str, method: str,
               path: str) -> None:
        self.total += 1
        key = (reason, address)
        seen = self.counts.get(key)
        if seen is not None:
            self.counts[key] = seen + 1
            return
        if len(self.counts) >= self.max_pairs:
            self.unlisted += 1
            return
        self.counts[key] = 1
        logs.event(log, self.event, reason=reason, address=address, status=status, klass=klass, defense_level=level,
                   tier=tier, method=method, path=path)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(self.window, self.flush)

    def flush(self) -> None:
        self._flusher = None
        repeats = self.total - len(self.counts) - self.unlisted
        if repeats > 0 or self.unlisted:
            by_reason: collections.Counter[str] = collections.Counter()
            by_address: collections.Counter[str] = collections.Counter()
            for (reason, address), count in self.counts.items():
                by_reason[reason] += count
                by_address[address] += count
            logs.event(log, f"{self.event}_summary", window_seconds=self.window, total=self.total,
                       by_reason=dict(by_reason.most_common(20)), top_addresses=dict(by_address.most_common(10)),
                       pairs_not_listed=self.unlisted)
        self.counts = {}
        self.unlisted = 0
        self.total = 0
        self._window_end = time.monotonic() + self.window
