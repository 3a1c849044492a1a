"""Behavioural probe detection, after CrowdSec's http-probing scenario: a source that asks for many
distinct paths that do not exist (or are refused) is scanning, and is banned.

A leaky bucket per address fills by one for each *distinct* path answered 400, 403, 404 or 405 and leaks
`1 / leak` a second; past `capacity` the address is banned. Static files (a single-page app missing an
asset asks for it again and again, one path) and established accounts are not counted, and only the
address is banned, never its network: an office behind one NAT is not punished for one scanner.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from floodwall.config import Seconds, typed

PATHS_KEPT = 64  # distinct paths remembered per address: enough to tell a scan from a retry


@dataclasses.dataclass(frozen=True)
class ProbingPolicy:
    statuses: frozenset[int] = frozenset({400, 403, 404, 405})
    capacity: int = 10
    leak: float = 10.0  # seconds for the bucket to lose one
    ban: float = 300.0  # escalated for repeat offenders
    ignore: tuple[str, ...] = (".js", ".css", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp",
                               ".woff", ".woff2", ".ttf")

    @classmethod
    def from_data(cls, data: Any, where: str) -> ProbingPolicy:
        table = typed(_ProbingTable, data, where)
        return cls(frozenset(table.statuses), table.capacity, table.leak, table.ban,
                   tuple(s.lower() for s in table.ignore))


class _ProbingTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[probing] as written (capacity 0 would turn nothing off: leave the table out, or set a large one)."""

    statuses: list[Annotated[int, msgspec.Meta(ge=400, le=599)]] = msgspec.field(
        default_factory=lambda: sorted(ProbingPolicy.statuses))
    capacity: Annotated[int, msgspec.Meta(ge=1)] = ProbingPolicy.capacity
    leak: Seconds = Seconds(ProbingPolicy.leak)
    ban: Seconds = Seconds(ProbingPolicy.ban)
    ignore: list[str] = msgspec.field(default_factory=lambda: list(ProbingPolicy.ignore))


@dataclasses.dataclass(slots=True)
class _Bucket:
    level: float
    at: float
    paths: set[int]


class Probes:
    def __init__(self, policy: ProbingPolicy, max_addresses: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.max_addresses = max_addresses
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def ban(self) -> float:
        return self.policy.ban

    def counts(self, status: int, path: str) -> bool:
        """Whether an answer is the kind a scan collects."""
        return status in self.policy.statuses and not path.lower().endswith(self.policy.ignore)

    def answered(self, address: str, path: str) -> bool:
        """One counted answer to `address` for `path`: True when the address overflows (ban it)."""
        now = self.clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._forget(now)
            bucket = self._buckets[address] = _Bucket(0.0, now, set())
        bucket.level = max(0.0, bucket.level - (now - bucket.at) / self.policy.leak)
        bucket.at = now
        if bucket.level == 0.0:
            bucket.paths.clear()
        key = hash(path)
        if key in bucket.paths:
            return False  # the same missing path again: a retry, not a scan
        if len(bucket.paths) < PATHS_KEPT:
            bucket.paths.add(key)
        bucket.level += 1.0
        if bucket.level > self.policy.capacity:
            del self._buckets[address]
            return True
        return False

    def _forget(self, now: float) -> None:
        """Drop the buckets that have leaked empty; if none has, all of them (memory stays bounded)."""
        empty = [a for a, b in self._buckets.items() if b.level - (now - b.at) / self.policy.leak <= 0]
        for address in empty:
            del self._buckets[address]
        if len(self._buckets) >= self.max_addresses:
            self._buckets.clear()
