"""Password hashing is bounded: a sign-in that cannot get a hashing slot in time is refused, not queued."""

from __future__ import annotations

import asyncio

import pytest

from floodwall.accounts.passwords import Passwords
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
