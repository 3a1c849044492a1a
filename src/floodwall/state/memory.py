"""The embedded Store: plain dicts in this process, no round trips, bounded in memory."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from floodwall.limits import Bucket, Verdict
from floodwall.state.store import TRAFFIC_MEMORY, Ban, advance, charged, gcra

STRIKE_MEMORY = 86400.0


class MemoryStore:
    def __init__(self, max_keys: int = 2_000_000, clock: Callable[[], float] = time.time) -> None:
        self.max_keys = max_keys
        self.clock = clock
        # one dict a rule, keyed by int where it can be: 1,000,000 addresses cost ~100 bytes each
        self._tat: dict[str, dict[int | str, float]] = {}
        self._size = 0
        self._floats: dict[float, float] = {}
        self._bans: dict[str, Ban] = {}
        self._strikes: dict[str, tuple[int, float]] = {}
        self._lists: dict[tuple[str, str], dict[str, str]] = {}
        self._level: dict[str, object] | None = None
        self._queues: dict[str, tuple[int, float, float]] = {}
        self._history: list[dict[str, object]] = []
        self._traffic: dict[int, dict[str, int]] = {}
        self._shares: dict[str, dict[str, tuple[dict[str, int], float]]] = {}

    def decide(self, buckets: Sequence[Bucket], spend: bool = True) -> list[Verdict]:
        """Synchronous core of hit(): the edge calls it directly on the hot path."""
        now = self.clock()
        results = []
        tables = []
        new_tats = []
        allowed = True
        for bucket in buckets:
            table = self._tat.get(bucket.rule)
            if table is None:
                table = self._tat[bucket.rule] = {}
            verdict, new_tat = gcra(table.get(bucket.ident, 0.0), now, bucket)
            results.append(verdict)
            tables.append(table)
            new_tats.append(new_tat)
            allowed = allowed and verdict.allowed
        if allowed and spend:
            for bucket, table, new_tat in zip(buckets, tables, new_tats, strict=True):
                if bucket.ident not in table:
                    self._size += 1
                table[bucket.ident] = self._shared(new_tat, bucket.interval)
            if self._size > self.max_keys:
                self._evict(now)
        return results

    def _shared(self, tat: float, interval: float) -> float:
        """The arrival time rounded down to 1/1024 of the rule's interval, as one float object per value: a
        flood from a million addresses then holds far fewer floats than a million (about 24 MB less). Rounding
        down errs towards the client, by less than 0.1% of a request each time."""
        quantum = interval / 1024
        value = math.floor(tat / quantum) * quantum if quantum > 0 else tat
        found = self._floats.get(value)
        if found is None:
            if len(self._floats) >= 200_000:
                self._floats.clear()
            found = self._floats[value] = value
        return found

    def _evict(self, now: float) -> None:
        # a bucket whose arrival time has passed is full again: forgetting it changes no decision
        for rule, table in self._tat.items():
            self._tat[rule] = {k: v for k, v in table.items() if v > now}
        self._size = len(self)
        overflow = self._size - self.max_keys * 3 // 4
        for table in sorted(self._tat.values(), key=len, reverse=True):
            if overflow <= 0:
                break
            # still too many live buckets (a flood of distinct keys): forget the oldest-written first
            for key in list(table)[: min(overflow, len(table))]:
                del table[key]
                overflow -= 1
        self._size = len(self)

    def __len__(self) -> int:
        return sum(len(table) for table in self._tat.values())

    async def hit(self, buckets: Sequence[Bucket], peek: Sequence[Bucket] = (),
                  hold: Sequence[Bucket] = ()) -> list[Verdict]:
        return self.decide_now(buckets, peek, hold)

    def decide_now(self, buckets: Sequence[Bucket], peek: Sequence[Bucket] = (),
                   hold: Sequence[Bucket] = ()) -> list[Verdict]:
        found = self.decide(buckets)
        if peek:
            found += self.decide(peek, spend=False)
        if hold:
            found += self._hold(peek, hold, all(verdict.allowed for verdict in found[:len(buckets)]))
        return found

    def _hold(self, peek: Sequence[Bucket], hold: Sequence[Bucket], spend: bool) -> list[Verdict]:
        """decide(hold), each held bucket counting at least what its peeked one (the same place) has spent."""
        if len(hold) != len(peek):
            return self.decide(hold, spend)
        now = self.clock()
        verdicts, tats = [], []
        for held, strikes in zip(hold, peek, strict=True):
            tat = max(self._tat.get(held.rule, {}).get(held.ident, 0.0),
                      self._tat.get(strikes.rule, {}).get(strikes.ident, 0.0))
            verdict, tat = gcra(tat, now, held)
            verdicts.append(verdict)
            tats.append(tat)
        if spend and all(verdict.allowed for verdict in verdicts):
            for held, tat in zip(hold, tats, strict=True):
                table = self._tat.setdefault(held.rule, {})
                if held.ident not in table:
                    self._size += 1
                table[held.ident] = self._shared(tat, held.interval)
        return verdicts

    async def peek(self, buckets: Sequence[Bucket]) -> list[Verdict]:
        return self.decide(buckets, spend=False)

    def holding(self) -> bool:
        return True

    async def charge(self, buckets: Sequence[Bucket]) -> None:
        self.force(buckets)

    def charge_later(self, buckets: Sequence[Bucket]) -> None:
        self.force(buckets)  # no I/O to save: now

    def force(self, buckets: Sequence[Bucket]) -> None:
        now = self.clock()
        for bucket in buckets:
            table = self._tat.setdefault(bucket.rule, {})
            if bucket.ident not in table:
                self._size += 1
            table[bucket.ident] = charged(table.get(bucket.ident, 0.0), now, bucket)

    async def queue(self, name: str, rate: float, burst: float, join: bool) -> tuple[int, float]:
        return self.queue_now(name, rate, burst, join)

    def queue_now(self, name: str, rate: float, burst: float, join: bool) -> tuple[int, float]:
        now = self.clock()
        issued, frontier, last = self._queues.get(name, (0, burst, now))
        issued, frontier = advance(issued, frontier, last, now, rate, burst, join)
        self._queues[name] = (issued, frontier, now)
        return issued, frontier

    async def ban(self, target: str, reason: str, duration: float, escalate: bool = True) -> Ban:
        now = self.clock()
        strikes, since = self._strikes.get(target, (0, now))
        if now - since > STRIKE_MEMORY:
            strikes = 0
        if escalate:
            duration *= 2**strikes
            self._strikes[target] = (strikes + 1, now)
        ban = Ban(target, reason, now + duration, strikes + 1 if escalate else strikes)
        self._bans[target] = ban
        return ban

    async def unban(self, target: str) -> bool:
        return self._bans.pop(target, None) is not None

    async def bans(self) -> list[Ban]:
        now = self.clock()
        self._bans = {t: b for t, b in self._bans.items() if b.until > now}
        if self._strikes:  # a strike is forgotten after STRIKE_MEMORY (Redis expires its keys the same way)
            self._strikes = {t: s for t, s in self._strikes.items() if now - s[1] <= STRIKE_MEMORY}
        return sorted(self._bans.values(), key=lambda b: b.until)

    async def list_entries(self) -> list[dict[str, str]]:
        return list(self._lists.values())

    async def set_list_entry(self, entry: dict[str, str]) -> None:
        self._lists[(entry["list"], entry["cidr"])] = entry

    async def remove_list_entry(self, list_name: str, cidr: str) -> bool:
        return self._lists.pop((list_name, cidr), None) is not None

    async def get_level(self) -> dict[str, object] | None:
        return self._level

    async def set_level(self, record: dict[str, object], history_limit: int = 200) -> None:
        self._level = record
        self._history.insert(0, record)
        del self._history[history_limit:]

    async def level_history(self, limit: int = 50) -> list[dict[str, object]]:
        return self._history[:limit]

    async def add_traffic(self, second: int, counts: Mapping[str, int]) -> None:
        found = self._traffic.setdefault(second, {})
        for name, count in counts.items():
            found[name] = found.get(name, 0) + count
        while len(self._traffic) > TRAFFIC_MEMORY:
            del self._traffic[min(self._traffic)]

    async def traffic(self, second: int) -> dict[str, int]:
        return dict(self._traffic.get(second, {}))

    async def share(self, name: str, owner: str, figures: Mapping[str, int],
                    ttl: float) -> list[dict[str, int]] | None:
        now = time.monotonic()
        board = self._shares.setdefault(name, {})
        board[owner] = (dict(figures), now)
        for gone in [who for who, (_, at) in board.items() if now - at > ttl]:
            del board[gone]
        return [dict(found) for who, (found, _) in board.items() if who != owner]

    async def unshare(self, name: str, owner: str) -> None:
        self._shares.get(name, {}).pop(owner, None)

    async def lead(self, role: str, owner: str, ttl: float) -> bool:
        return True  # one process: it plays every role

    async def close(self) -> None:
        return None
