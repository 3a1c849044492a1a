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
from typing import Any

from floodwall.config import ConfigError, parse_duration

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
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(data) - {"statuses", "capacity", "leak", "ban", "ignore"}
        if unknown:
            raise ConfigError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
        statuses = data.get("statuses", sorted(cls.statuses))
        if not isinstance(statuses, list) or not all(isinstance(s, int) and 400 <= s <= 599 for s in statuses):
            raise ConfigError(f"{where} statuses: must be a list of 4xx or 5xx status codes")
        capacity = data.get("capacity", cls.capacity)
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"{where} capacity: must be a whole number above 0 (0 turns nothing off: leave the "
                              "table out, or set a large capacity)")
        ignore = data.get("ignore", list(cls.ignore))
        if not isinstance(ignore, list) or not all(isinstance(suffix, str) for suffix in ignore):
            raise ConfigError(f"{where} ignore: must be a list of path endings like '.js'")
        try:
            leak = float(parse_duration(data.get("leak", cls.leak)))
            ban = float(parse_duration(data.get("ban", cls.ban)))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if leak <= 0 or ban <= 0:
            raise ConfigError(f"{where}: leak and ban must be above zero")
        return cls(frozenset(statuses), capacity, leak, ban, tuple(s.lower() for s in ignore))


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
