"""The Store protocol: what the edge asks of state, and nothing more.

A limit is a GCRA bucket: `interval` seconds between requests on average, `tolerance` seconds of burst.
`hit` checks several buckets at once and spends on all of them only if every one allows (a request refused
by one limit does not use up another); in Redis it is one round trip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol

from floodwall.limits import Bucket, Verdict

TRAFFIC_MEMORY = 300  # seconds of traffic counts a Store keeps


@dataclasses.dataclass(frozen=True, slots=True)
class Ban:
    target: str  # an address or a CIDR
    reason: str
    until: float  # unix time
    strikes: int


class Store(Protocol):
    async def hit(self, buckets: Sequence[Bucket], peek: Sequence[Bucket] = (),
                  hold: Sequence[Bucket] = ()) -> list[Verdict]:
        """Check every bucket; spend on all of them only if all allow. The verdicts of `peek` follow, looked
        at in the same round trip without spending and without a say in the others (prompt strikes); then
        those of `hold`, spent (all or none, without a say in the others) only where `buckets` were: a prompt's
        strike held until it is scored (Held). Given as many as `peek`, each held bucket counts at least what
        the peeked one in its place has spent (a refund given twice, or strikes spent before it was kept,
        cannot leave it below). Where the Store falls back to this process (Redis away), nothing is held."""
        ...

    def decide_now(self, buckets: Sequence[Bucket], peek: Sequence[Bucket] = (),
                   hold: Sequence[Bucket] = ()) -> list[Verdict] | None:
        """hit() without waiting, where the store needs no I/O for it; None where it does (then await hit)."""
        ...

    async def peek(self, buckets: Sequence[Bucket]) -> list[Verdict]:
        """What hit would say, without spending."""
        ...

    def holding(self) -> bool:
        """Strikes are held now (hit's `hold`): not while the Store decides in this process instead (Redis away)."""
        ...

    async def charge(self, buckets: Sequence[Bucket]) -> None:
        """Spend (or, with a negative cost, give back) without asking: reconciling an estimate with the truth."""
        ...

    def charge_later(self, buckets: Sequence[Bucket]) -> None:
        """charge(), sent when convenient (Redis: within CHARGE_DELAY, merged with others in one round trip),
        for charges nobody waits on: a call's tokens reconciled, a strike, a refund."""
        ...

    async def queue(self, name: str, rate: float, burst: float, join: bool) -> tuple[int, float]:
        """A waiting room's two counters, moved together: the numbers issued so far (`join` issues one more,
        the caller's) and the frontier, which advances `rate` a second and runs at most `burst` ahead of the
        numbers issued. Every number at or below the frontier has had its turn."""
        ...

    async def ban(self, target: str, reason: str, duration: float, escalate: bool = True) -> Ban:
        """Ban for `duration`, times 2**strikes for a repeat offender when escalating; strikes last a day."""
        ...

    async def unban(self, target: str) -> bool: ...

    async def bans(self) -> list[Ban]: ...

    async def list_entries(self) -> list[dict[str, str]]:
        """Operator allow and deny entries: {"list": "allow"|"deny", "cidr", "reason"}."""
        ...

    async def set_list_entry(self, entry: dict[str, str]) -> None: ...

    async def remove_list_entry(self, list_name: str, cidr: str) -> bool: ...

    async def get_level(self) -> dict[str, object] | None:
        """The pinned or detected level record, shared by every process using this store."""
        ...

    async def set_level(self, record: dict[str, object], history_limit: int = 200) -> None: ...

    async def level_history(self, limit: int = 50) -> list[dict[str, object]]: ...

    async def add_traffic(self, second: int, counts: Mapping[str, int]) -> None:
        """Add one process's traffic counts for a second (unix time) to every process's sum."""
        ...

    async def traffic(self, second: int) -> dict[str, int]:
        """Every process's traffic counts for a second, summed (kept TRAFFIC_MEMORY seconds)."""
        ...

    async def share(self, name: str, owner: str, figures: Mapping[str, int],
                    ttl: float) -> list[dict[str, int]] | None:
        """Publish this process's `figures` under `name`, and read every other process's published within the
        last `ttl` seconds (one that stopped publishing drops out): replicas that share one model server.
        None when the board cannot be reached (not the same as no others)."""
        ...

    async def unshare(self, name: str, owner: str) -> None:
        """Take this process's figures off the board (it stops: the others need not wait out the ttl)."""
        ...

    async def lead(self, role: str, owner: str, ttl: float) -> bool:
        """Hold (or renew) the lease on a role that one process at a time plays; False if another holds it."""
        ...

    async def close(self) -> None: ...


HELD = "/held"  # a held bucket's rule: its strike bucket's, with this after it


def held_buckets(strikes: Sequence[Bucket]) -> list[Bucket]:
    """Beside each of an account's prompt-strike buckets, one that counts the strikes spent and those held for
    its prompts let through before they were scored, in every process: the same rate and burst, so the two
    drain alike and what one holds beyond the other is the prompts in flight."""
    return [Bucket(bucket.rule + HELD, bucket.ident, bucket.interval, bucket.tolerance) for bucket in strikes]


def held_refund(charge: Bucket) -> bool:
    """A hold given back (Held.release): what only the shared Store held, never a process's fallback."""
    return charge.cost < 0 and charge.rule.endswith(HELD)


class Held:
    """One prompt's strike, held in the Store (hit with `hold`) from before its call goes on until it is
    scored: `spend` when the prompt was flagged (the hold becomes the strike, which is charged on its own
    buckets), `release` otherwise. A flagged prompt goes through unscored only with one held, so however many
    processes let an account's prompts through, no more flagged ones pass than it has strikes."""

    __slots__ = ("buckets", "store")

    def __init__(self, store: Store, buckets: Sequence[Bucket]) -> None:
        self.store = store
        self.buckets = buckets

    def take(self) -> Held:
        """What is held, moved to a new owner (a prompt aside, which outlives its call): this one holds nothing."""
        taken = Held(self.store, self.buckets)
        self.buckets = ()
        return taken

    def spend(self) -> bool:
        """The prompt spent a strike: what was held stays counted. False where nothing was held (any more)."""
        held, self.buckets = self.buckets, ()
        return bool(held)

    def release(self) -> None:
        """The prompt was not flagged (or never went on): given back, once."""
        held, self.buckets = self.buckets, ()
        if held:
            self.store.charge_later([bucket.refund() for bucket in held])


def charged(tat: float, now: float, bucket: Bucket) -> float:
    """The arrival time after a forced charge; a refund never moves it before now (a full bucket)."""
    return max((tat if tat > now else now) + bucket.interval * bucket.cost, now)


def advance(issued: int, frontier: float, last: float, now: float, rate: float, burst: float,
            join: bool) -> tuple[int, float]:
    """The waiting room's counters at `now` (the one formula both stores apply)."""
    frontier = min(issued + burst, frontier + rate * max(0.0, now - last))
    return issued + (1 if join else 0), frontier


def once(rule: str, ident: int | str, ttl: float, cost: float = 1.0) -> Bucket:
    """A bucket that allows one use in `ttl` seconds (a ticket, a challenge); a cost of -1 gives the use back."""
    return Bucket(rule, ident, ttl, ttl, cost)


async def use_once(store: Store, rule: str, ident: int | str, ttl: float) -> bool:
    """Spend the one use of `ident` (False: it was spent within `ttl`)."""
    verdicts = await store.hit([once(rule, ident, ttl)])
    return verdicts[0].allowed


def gcra(tat: float, now: float, bucket: Bucket) -> tuple[Verdict, float]:
    """One GCRA decision: the verdict and the bucket's new theoretical arrival time (unchanged if refused)."""
    start = tat if tat > now else now
    new_tat = start + bucket.interval * bucket.cost
    over = new_tat - now - bucket.tolerance
    if over > 1e-9:
        remaining = int((bucket.tolerance - (start - now)) / bucket.interval) if bucket.interval else 0
        return Verdict(False, over, max(0, remaining), start - now), tat
    remaining = int((bucket.tolerance - (new_tat - now)) / bucket.interval + 1e-9) if bucket.interval else 0
    return Verdict(True, 0.0, remaining, new_tat - now), new_tat
