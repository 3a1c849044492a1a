"""Limits as data and their answers: a limit from policy text, the facts about a caller that rules key on,
one GCRA bucket and its verdict, and the refusal a throttled request gets. A leaf: the gate, the login
guard, prompt screening and admission all speak it; the Store (state/) decides it."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from floodwall.config import ConfigError, parse_duration
from floodwall.errors import ApiError

_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*([\w.]+)\s*(?:burst\s+(\d+))?\s*$")


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    count: int
    period: float
    burst: int

    @property
    def interval(self) -> float:
        return self.period / self.count

    @property
    def tolerance(self) -> float:
        return self.interval * self.burst

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s burst {self.burst}"


MAX_COUNT = 10**9  # a count or burst beyond is no limit, and Lua's numbers would lose it on the way back
MAX_PERIOD = 366 * 86400.0


def parse_limit(text: str, where: str) -> Limit | None:
    if text.strip().lower() in {"off", "none", ""}:
        return None
    match = _LIMIT.match(text)
    if not match:
        raise ConfigError(f"{where}: {text!r} is not a limit like '120/1m' or '5/30m burst 2'")
    count = int(match.group(1))
    period = float(parse_duration(match.group(2) if match.group(2)[0].isdigit() else "1" + match.group(2)))
    burst = int(match.group(3)) if match.group(3) else count
    if not (1 <= count <= MAX_COUNT and 0 < period <= MAX_PERIOD and 1 <= burst <= MAX_COUNT):
        raise ConfigError(f"{where}: {text!r} needs a count and a burst from 1 to {MAX_COUNT:,} and a period "
                          "above zero, at most a year")
    return Limit(count, period, burst)


class Caller(NamedTuple):
    """The facts about one request that rules key on."""

    ip: int
    network: int
    tier: str
    account: int | None
    key: int | None
    login: str | None = None
    device: str | None = None


class Bucket(NamedTuple):
    """One limit (`rule`, e.g. "inference/ip") applied to one key (`ident`: an address as an int, an account id).
    NamedTuples, not frozen dataclasses: the gate builds several per request, and these cost a third as much."""

    rule: str
    ident: int | str
    interval: float  # seconds per unit: period / limit
    tolerance: float  # seconds of burst: interval * burst
    cost: float = 1.0

    def refund(self) -> Bucket:
        """What gives this charge back (its cost negated): built directly, a third of _replace's cost."""
        return Bucket(self.rule, self.ident, self.interval, self.tolerance, -self.cost)


class Verdict(NamedTuple):
    """The answer for one bucket: allowed, how long to wait if not, what is left, when it is full again."""

    allowed: bool
    retry_after: float
    remaining: int
    reset_after: float


REGISTRATION_BUSY = ("Registration is busy because of high demand or an ongoing attack. Please wait and try "
                     "again. Registered users can log in normally.")


def first_refusal(klass: str, buckets: Sequence[Bucket], verdicts: Sequence[Verdict]) -> ApiError | None:
    refused = [(v.retry_after, b.rule, b, v) for b, v in zip(buckets, verdicts, strict=True) if not v.allowed]
    if not refused:
        return None
    # the longest wait is the one that matters: retrying sooner would be refused again
    _, _, bucket, verdict = max(refused)
    return _throttled(klass, bucket, verdict)


def _throttled(klass: str, bucket: Bucket, verdict: Verdict) -> ApiError:
    # a flood meets the same few refusals over and over: build each once
    return _refusal(klass, bucket.rule, math.ceil(verdict.retry_after))


@functools.lru_cache(maxsize=4096)
def _refusal(klass: str, rule: str, wait: int) -> ApiError:
    if klass == "auth-register":
        return ApiError(429, REGISTRATION_BUSY, "registration_busy", retry_after=wait, reason=rule)
    if klass == "auth-login":
        return ApiError(429, "Too many sign-in attempts. Please wait and try again.", "login_throttled",
                        retry_after=wait, reason=rule)
    return ApiError(429, f"Rate limit reached ({rule}). Please try again in {max(1, wait)}s.",
                    "rate_limit_exceeded", type="requests", retry_after=wait, reason=rule)


class LimitRules(Protocol):
    """The limit rules as data (edge/policy.py's Policy), as the login guard and prompt screening ask them."""

    def buckets(self, klass: str, level: str, caller: Caller) -> Sequence[Bucket]:
        """The buckets a caller's request of this class falls in at this level (kept: not to be changed)."""
        ...

    def rule_names(self, key: str, excluding_tier: str) -> frozenset[str]:
        """The rules keyed by `key` that do not apply to `excluding_tier`."""
        ...
