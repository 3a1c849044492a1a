"""Who is talking, in bounded memory: which addresses and networks are new, and the heaviest talkers.

A flood or a flash crowd shows first as addresses never seen before; a few hosts hammering the service show
as heavy hitters. Both are counted on every request, so both are a set or dict operation and nothing more.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from floodwall.identity import Networks


class NewSources:
    """Remembers addresses and networks for `memory` to `2 * memory` seconds in two generations of sets (the
    older is dropped whole), at most `limit` of each per generation: a flood of unique addresses can make
    the sets turn over sooner, never grow without bound."""

    def __init__(self, memory: float = 600.0, limit: int = 250_000, networks: Networks | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.memory = memory
        self.limit = limit
        self.clock = clock
        networks = networks or Networks()
        self.v4_mask, self.v6_mask = networks.v4_mask, networks.v6_mask
        self.addresses: set[str] = set()
        self.older_addresses: set[str] = set()
        self.networks: set[int] = set()
        self.older_networks: set[int] = set()
        self._turn_at = clock() + memory

    def seen(self, address: str) -> tuple[bool, bool]:
        """Note one request from `address`: whether the address, and its network, are new."""
        if address in self.addresses:
            return False, False
        if len(self.addresses) >= self.limit or self.clock() >= self._turn_at:
            self._turn()
        self.addresses.add(address)
        if address in self.older_addresses:
            return False, False
        network = self._network(address)
        if network in self.networks:
            return True, False
        self.networks.add(network)
        return True, network not in self.older_networks

    def _turn(self) -> None:
        self.older_addresses, self.addresses = self.addresses, set()
        self.older_networks, self.networks = self.networks, set()
        self._turn_at = self.clock() + self.memory

    def _network(self, address: str) -> int:
        # inet_pton: a quarter of ipaddress's cost, and this runs for every new address of a flood
        try:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, address)) & self.v4_mask
        except OSError:
            pass
        try:
            return (int.from_bytes(socket.inet_pton(socket.AF_INET6, address)) | 1 << 128) & self.v6_mask
        except OSError:
            return -1

    @property
    def tracked(self) -> int:
        return len(self.addresses) + len(self.older_addresses)


class Talker(NamedTuple):
    key: str
    hits: int  # an overestimate by at most `error`
    error: int


class HeavyHitters:
    """Space-Saving (Metwally et al., 2005) with amortised eviction: at most `2 * capacity` counters. Any key
    seen more than total / capacity times is among them, its count overestimated by at most `error`."""

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.floor = 0
        self.total = 0

    def add(self, key: str) -> None:
        self.total += 1
        count = self.counts.get(key)
        if count is not None:
            self.counts[key] = count + 1
            return
        if len(self.counts) >= 2 * self.capacity:
            self._evict()
        # a newcomer may have been counted before and evicted: it inherits the largest count dropped
        self.counts[key] = self.floor + 1
        self.errors[key] = self.floor

    def _evict(self) -> None:
        ranked = sorted(self.counts.items(), key=lambda item: item[1], reverse=True)
        self.floor = max(self.floor, ranked[self.capacity][1])
        self.counts = dict(ranked[: self.capacity])
        self.errors = {key: self.errors[key] for key in self.counts}

    def top(self, n: int = 10) -> list[Talker]:
        """The `n` keys with the most requests for certain (count less error): a newcomer's inherited count
        does not put it above a real heavy hitter."""
        ranked = sorted(self.counts, key=lambda key: self.counts[key] - self.errors[key], reverse=True)[:n]
        return [Talker(key, self.counts[key], self.errors[key]) for key in ranked]
