"""Password hashing is bounded: a sign-in that cannot get a hashing slot in time is refused, not queued; and a
wrong password's answer takes as long whatever hash it was checked against."""

from __future__ import annotations

import asyncio
import time

import pytest
from argon2 import PasswordHasher

from floodwall.accounts.passwords import PAD_MARGIN, Passwords, Slots, _parameters
from floodwall.errors import ApiError


async def test_hashing_past_its_slots_is_refused_auth_busy() -> None:
    passwords = Passwords("fast", concurrency=1, wait=0.1)
    stored = await passwords.hash("correct horse battery staple")
    assert await passwords.verify(stored, "correct horse battery staple")
    assert not await passwords.verify(None, "anything")  # an unknown account: same work, False
    await passwords._slots.acquire()  # the one slot is busy (a stuffing wave's hash)
    try:
        with pytest.raises(ApiError) as refused:
            await passwords.verify(stored, "correct horse battery staple")
    finally:
        passwords._slots.release()
    error = refused.value
    assert (error.status, error.code, error.reason) == (503, "auth_busy", "auth_busy")
    assert error.retry_after is not None and error.retry_after >= 1
    assert await asyncio.wait_for(passwords.verify(stored, "correct horse battery staple"), 5)


def test_known_devices_get_the_next_hashing_slot_first() -> None:
    """During a stuffing wave the hashing slots are all taken: an owner's known device goes ahead of the wave."""

    async def scenario() -> list[str]:
        slots = Slots(1)
        await slots.acquire()  # the slot is busy
        served: list[str] = []

        async def caller(name: str, priority: bool) -> None:
            await slots.acquire(priority)
            served.append(name)
            slots.release()

        tasks = [asyncio.create_task(caller(f"wave{i}", False)) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(caller("owner", True)))
        gave_up = asyncio.create_task(caller("gave-up", False))
        await asyncio.sleep(0)
        gave_up.cancel()  # a waiter whose wait ran out leaves the line without taking a slot
        await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(*tasks)
        await slots.acquire()  # every slot came back
        return served

    assert asyncio.run(scenario()) == ["owner", "wave0", "wave1", "wave2"]


async def test_a_wait_cancelled_just_before_a_release_leaves_quietly() -> None:
    """A sign-in whose wait runs out (or whose client goes) in the same moment a slot is given back: the
    release drops the cancelled waiter before it wakes; it must still end cancelled, not with an error (seen
    under a stuffing wave as a 500 on /auth/login), and the slot must not be lost."""
    slots = Slots(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    slots.release()  # before the cancelled waiter runs again
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(slots.acquire(), 1)  # the slot came back


async def test_a_wrong_password_takes_as_long_whatever_the_hash_checked() -> None:
    """After a change of profile, accounts not signed in since keep hashes of the old cost, and an address
    with no account is checked against the new one: each answer waits for the slowest parameters' usual cost,
    so a wrong password's time does not tell them apart (issue 21's review)."""
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("an old account's password")
    passwords = Passwords("fast")
    slowest = max(passwords._cost.values())  # the current profile's, measured at start
    for stored in (cheap, None, cheap):
        started = time.perf_counter()
        assert await passwords.verify(stored, "wrong") is False
        # the lower bound holds on any machine, however busy: it is a sleep
        assert time.perf_counter() - started >= PAD_MARGIN * slowest * 0.99
    assert len(passwords._cost) == 2 and passwords._cost[_parameters(cheap)] < slowest
    assert await passwords.verify(cheap, "an old account's password") is True
