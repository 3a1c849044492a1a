"""Counts of named events over the last few seconds, in one-second slots: O(1) to add, bounded in memory."""

from __future__ import annotations

import time
from collections.abc import Callable


class Window:
    def __init__(self, span: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.span = span
        self.clock = clock
        self._slots: list[dict[str, int]] = [{} for _ in range(span)]
        self._stamps = [-1] * span

    def add(self, name: str, count: int = 1) -> None:
        second = int(self.clock())
        index = second % self.span
        if self._stamps[index] != second:
            self._stamps[index] = second
            self._slots[index] = {}
        slot = self._slots[index]
        slot[name] = slot.get(name, 0) + count

    def totals(self) -> dict[str, int]:
        """Each name's count over the last `span` seconds, this one included."""
        now = int(self.clock())
        found: dict[str, int] = {}
        for stamp, slot in zip(self._stamps, self._slots, strict=True):
            if now - self.span < stamp <= now:
                for name, count in slot.items():
                    found[name] = found.get(name, 0) + count
        return found
