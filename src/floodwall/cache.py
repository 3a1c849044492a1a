"""A small bounded cache with expiry, for answers that are read on every request and change rarely."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Final, Generic, TypeVar

V = TypeVar("V")


class Missing:
    pass


MISSING: Final = Missing()


class TTLCache(Generic[V]):
    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> V | Missing:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return MISSING
        return entry[1]

    def stale(self, key: str) -> V | Missing:
        """The last value put, however old: for when the source cannot be asked. Expired entries stay until
        newer ones push them out (at most `max_entries` in all)."""
        entry = self._entries.get(key)
        return MISSING if entry is None else entry[1]

    def put(self, key: str, value: V) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            # oldest insertion first: a flood of made-up keys cannot push out more than it adds
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
