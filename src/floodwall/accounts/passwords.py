"""argon2id password hashing, run off the event loop so a hash never stalls other requests, and bounded so
that a credential-stuffing wave cannot spend every core on hashing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from typing import TypeVar

from argon2 import Parameters, PasswordHasher, extract_parameters, profiles
from argon2.exceptions import InvalidHashError, VerificationError

from floodwall.errors import ApiError

T = TypeVar("T")

# OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): about 30 ms of one core here. RFC 9106's low-memory
# profile (64 MiB, 3 passes, 4 lanes) costs about half a second of four lanes each: fifty sign-in attempts
# a second of a stuffing wave would need dozens of cores.
OWASP = Parameters(type=profiles.RFC_9106_LOW_MEMORY.type, version=profiles.RFC_9106_LOW_MEMORY.version,
                   salt_len=16, hash_len=32, time_cost=2, memory_cost=19 * 1024, parallelism=1)
PROFILES = {
    "": OWASP,
    "owasp": OWASP,
    "rfc9106-low-memory": profiles.RFC_9106_LOW_MEMORY,
    "fast": dataclasses.replace(OWASP, time_cost=1, memory_cost=1024),  # tests only
}


class Slots:
    """A semaphore whose waiters with `priority` are served first: during a stuffing wave, the devices that
    signed in before (their device cookie says so) get the next free hashing slot ahead of the wave."""

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._waiting: tuple[collections.deque[asyncio.Future[None]], ...] = (collections.deque(), collections.deque())

    async def acquire(self, priority: bool = False) -> None:
        if self._free > 0 and not any(self._waiting):
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        queue = self._waiting[0 if priority else 1]
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as its wait ran out: pass it on
            else:
                # a release between the cancel and this line has already dropped it from the queue
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in self._waiting:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot goes straight to the waiter
                    return
        self._free += 1


# how far above the slowest parameters' usual cost a verification is padded: most of them then end at the
# same moment, whichever hash (or none) they checked
PAD_MARGIN = 1.5


def _parameters(stored: str) -> str:
    """The hash's algorithm and cost ("$argon2id$v=19$m=19456,t=2,p=1"): what its verification costs."""
    return "$".join(stored.split("$", 4)[:4])


def _cost_of(stored: str) -> float:
    """Seconds a verification of a hash with `stored`'s parameters takes here: the median of three, timed on a
    hash of its own (measured once a process, the first time such a hash is seen)."""
    try:
        hasher = PasswordHasher.from_parameters(extract_parameters(stored))
    except InvalidHashError:
        return 0.0
    sample = hasher.hash("floodwall-cost")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with contextlib.suppress(VerificationError):
            hasher.verify(sample, "not it")
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


class Passwords:
    def __init__(self, profile: str = "", concurrency: int | None = None, wait: float = 2.0) -> None:
        self._hasher = PasswordHasher.from_parameters(PROFILES[profile])
        self._dummy = self._hasher.hash("floodwall-timing-equaliser")
        # seconds one verification takes, per parameters seen: after a change of profile, accounts not signed
        # in since keep hashes of the old cost, and an unknown address is checked against the new one. A
        # process meets a few parameters in its life (the profiles ever used)
        self._cost: dict[str, float] = {_parameters(self._dummy): _cost_of(self._dummy)}
        # hashes at once: half the cores, so the event loop and the model relay keep theirs
        self._slots = Slots(concurrency or max(1, (os.cpu_count() or 2) // 2))
        self._wait = wait

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str, priority: bool = False) -> bool:
        """True when it matches; with no stored hash, spends the same time and says False. With `priority`
        (a device that signed in before), it goes ahead of the others waiting for a hashing slot.

        The answer comes no sooner than PAD_MARGIN times the usual cost of the slowest parameters in use (the
        wait is a sleep, not work): else the time of a wrong password would tell an account whose hash is of
        an older, cheaper or dearer profile from an address with no account."""
        params = _parameters(stored or self._dummy)
        if params not in self._cost:
            self._cost[params] = await asyncio.to_thread(_cost_of, stored or self._dummy)
        ok, spent = await self._run(self._timed_verify, stored, password, priority=priority)
        pad = PAD_MARGIN * max(self._cost.values()) - spent
        if pad > 0:
            await asyncio.sleep(pad)
        return ok

    def _timed_verify(self, stored: str | None, password: str) -> tuple[bool, float]:
        start = time.perf_counter()
        ok = self._verify(stored, password)
        return ok, time.perf_counter() - start

    async def _run(self, work: Callable[..., T], *args: object, priority: bool = False) -> T:
        try:
            async with asyncio.timeout(self._wait):
                await self._slots.acquire(priority)
        except TimeoutError:
            raise ApiError(503, "Sign-in and sign-up are very busy right now. Please wait a few seconds and try "
                           "again.", "auth_busy", retry_after=5) from None
        try:
            return await asyncio.to_thread(work, *args)
        finally:
            self._slots.release()

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
