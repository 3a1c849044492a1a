"""argon2id password hashing, run off the event loop so a hash never stalls other requests."""

from __future__ import annotations

import asyncio
import dataclasses

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError


class Passwords:
    def __init__(self, profile: str = "") -> None:
        # RFC 9106's low-memory profile (64 MiB, 3 passes) unless told otherwise; "fast" is for tests
        parameters = profiles.RFC_9106_LOW_MEMORY
        if profile == "fast":
            parameters = dataclasses.replace(parameters, time_cost=1, memory_cost=1024, parallelism=1)
        self._hasher = PasswordHasher.from_parameters(parameters)
        self._dummy = self._hasher.hash("floodwall-timing-equaliser")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when it matches; with no stored hash, spends the same time and says False."""
        return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
