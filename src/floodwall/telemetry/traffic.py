"""The service's own traffic, counted as it passes: requests by class and outcome, new addresses and
networks, named events (sign-ins, sign-ups, shed model calls), heavy hitters.

The gate and the services add to this second's counts (a dict increment each); once a second the detector
closes the second into a flat `{name: count}` record that the Store sums across replicas, and adds it to the
running totals that /metrics exports.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from floodwall.telemetry.sources import HeavyHitters, NewSources, Talker

OUTCOMES = ("2xx", "3xx", "4xx", "5xx", "refused")
_OUTCOME_OF_STATUS = {hundred: f"{hundred}xx" for hundred in range(1, 6)}
SOURCES_PER_SECOND = 100_000  # distinct addresses counted in one second; beyond, the figure saturates


def request_key(klass: str, outcome: str) -> str:
    return f"req:{klass}:{outcome}"


def event_key(name: str) -> str:
    return f"event:{name}"


class Traffic:
    def __init__(self, sources: NewSources | None = None, talkers_window: float = 60.0, history: int = 300,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = sources or NewSources()
        self.clock = clock
        self.current: dict[str, int] = {}
        self.in_second: set[str] = set()
        self.totals: collections.Counter[str] = collections.Counter()
        # the heavy hitters of the window in progress and of the last whole one
        self.talkers_window = talkers_window
        self.talkers = HeavyHitters()
        self.last_talkers: list[Talker] = []
        self._talkers_until = clock() + talkers_window
        self.history: collections.deque[tuple[int, dict[str, int]]] = collections.deque(maxlen=history)

    def arrived(self, address: str) -> None:
        """One request from `address`, before anything is decided about it."""
        current = self.current
        current["arrivals"] = current.get("arrivals", 0) + 1
        self.talkers.add(address)
        if address not in self.in_second and len(self.in_second) < SOURCES_PER_SECOND:
            self.in_second.add(address)
        new_address, new_network = self.sources.seen(address)
        if new_address:
            current["new_addresses"] = current.get("new_addresses", 0) + 1
            if new_network:
                current["new_networks"] = current.get("new_networks", 0) + 1

    def answered(self, klass: str, status: int) -> None:
        self.count(request_key(klass, _OUTCOME_OF_STATUS.get(status // 100, "5xx")))

    def refused(self, klass: str) -> None:
        """The gate turned the request away (a limit, a ban, a list): the app never saw it."""
        self.count(request_key(klass, "refused"))

    def event(self, name: str, count: int = 1) -> None:
        self.count(event_key(name), count)

    def count(self, key: str, count: int = 1) -> None:
        self.current[key] = self.current.get(key, 0) + count

    def close_second(self, second: int) -> dict[str, int]:
        """This second's counts, flat, for the Store and the detector; they join the running totals."""
        closed, self.current = self.current, {}
        if self.in_second:
            closed["sources"] = len(self.in_second)
            self.in_second = set()
        self.totals.update(closed)
        self.history.append((second, closed))
        if self.clock() >= self._talkers_until:
            self.last_talkers = self.talkers.top(20)
            self.talkers = HeavyHitters(self.talkers.capacity)
            self._talkers_until = self.clock() + self.talkers_window
        return closed

    def recent(self, seconds: int) -> collections.Counter[str]:
        """The counts of the last `seconds` closed seconds and of the one in progress, in this process."""
        found: collections.Counter[str] = collections.Counter(self.current)
        for _, counts in list(self.history)[-seconds:]:
            found.update(counts)
        return found

    def top_talkers(self, n: int = 10) -> list[Talker]:
        """The heaviest talkers of the last whole window, or of the one in progress before the first ends."""
        return (self.last_talkers or self.talkers.top(n))[:n]

