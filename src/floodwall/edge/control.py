"""What the edge reads on every request but changes rarely: the defense level, bans, allow and deny lists.

Operators and the detector write them to the Store; each process keeps a snapshot, refreshed every
`interval` seconds and at once after a local change, so a decision never waits on the Store for them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Iterable

from floodwall import logs
from floodwall.background import cancel
from floodwall.db.audit import Audit
from floodwall.edge.policy import REGISTRATION_MODES
from floodwall.identity import IPAddress, normalised_network
from floodwall.levels import LEVELS, MODES
from floodwall.state.store import Ban, Store

log = logging.getLogger("floodwall.edge")


class AddressSet:
    """Addresses and networks, each found in one dict lookup per prefix length in use (not a scan of every
    entry: a wave of banned /64s must not make each request slower). Entries take the clients' one form:
    an IPv4-mapped entry is its IPv4 network."""

    def __init__(self, entries: Iterable[tuple[str, object]]) -> None:
        self.hosts: dict[IPAddress, object] = {}
        # (version, prefix length) -> {network address as an int: value}, most specific first
        by_length: dict[tuple[int, int], dict[int, object]] = {}
        for cidr, value in entries:
            try:
                network = normalised_network(ipaddress.ip_network(cidr, strict=False))
            except ValueError:  # one bad stored entry must not stop every ban and list from applying
                logs.event(log, "bad_network_entry_skipped", logging.WARNING, entry=repr(cidr)[:100])
                continue
            if network.num_addresses == 1:
                self.hosts.setdefault(network.network_address, value)
            else:
                by_length.setdefault((network.version, network.prefixlen), {}).setdefault(
                    int(network.network_address), value)
        bits = {4: 32, 6: 128}
        self.networks = [(version, ((1 << length) - 1) << (bits[version] - length), table)
                         for (version, length), table in sorted(by_length.items(), key=lambda item: -item[0][1])]

    def match(self, address: IPAddress) -> object | None:
        if self.hosts:
            found = self.hosts.get(address)
            if found is not None:
                return found
        if self.networks:
            value, version = int(address), address.version
            for family, mask, table in self.networks:
                if family == version:
                    found = table.get(value & mask)
                    if found is not None:
                        return found
        return None



class Control:
    def __init__(self, store: Store, default_mode: str = "auto", interval: float = 1.0,
                 audit: Audit | None = None) -> None:
        self.store = store
        self.audit = audit or Audit(None)
        self.default_mode = default_mode
        self.interval = interval
        self.level = default_mode if default_mode in LEVELS else "normal"
        self.record: dict[str, object] = {"mode": default_mode, "level": self.level,
                                          "reason": "configured default", "at": time.time(), "by": "config"}
        # the operator's sign-up mode ("auto": the policy's column for the level), kept in the level record
        # so that it is shared by every replica and each change is in the same history
        self.registration = "auto"
        self.bans = AddressSet([])
        self.allow = AddressSet([])
        self.deny = AddressSet([])
        self.healthy = True
        # bumped at every refresh: decisions remembered under an older generation are not reused
        self.generation = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="edge-control")

    async def stop(self) -> None:
        await cancel(self._task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    async def refresh(self) -> None:
        try:
            record = await self.store.get_level()
            bans = await self.store.bans()
            entries = await self.store.list_entries()
        except Exception as exc:  # the Store is away: keep the last snapshot, say so once
            if self.healthy:
                logs.event(log, "control_refresh_failed", logging.WARNING, error=repr(exc))
            self.healthy = False
            return
        self.healthy = True
        if record is not None:
            self.record = record
            self.level = str(record.get("level", "normal"))
            self.registration = str(record.get("registration", "auto"))
        self.generation += 1
        self.bans = AddressSet((b.target, b) for b in bans)
        self.allow = AddressSet((e["cidr"], e) for e in entries if e["list"] == "allow")
        self.deny = AddressSet((e["cidr"], e) for e in entries if e["list"] == "deny")

    def banned(self, address: IPAddress) -> Ban | None:
        found = self.bans.match(address)
        if isinstance(found, Ban) and found.until > time.time():
            return found
        return None

    async def set_mode(self, mode: str, reason: str, by: str) -> dict[str, object]:
        """Pin a level, or hand it back to the detector with "auto" (which holds the level in force)."""
        if mode not in MODES:
            raise ValueError(f"level must be one of {', '.join(MODES)}")
        level = self.level if mode == "auto" else mode
        record: dict[str, object] = {"mode": mode, "level": level, "reason": reason, "at": time.time(), "by": by,
                                     "previous": self.level, "registration": self.registration}
        await self.store.set_level(record)
        logs.event(log, "level_changed", logging.WARNING, mode=mode, defense_level=level, previous=self.level,
                   reason=reason, by=by)
        self.audit.record(by, "level.set", mode, defense_level=level, previous=self.level, reason=reason)
        await self.refresh()
        return record

    async def detected(self, level: str, reason: str) -> None:
        """The detector's move; it takes effect only while the mode is auto."""
        if self.record.get("mode", "auto") == "auto" and level != self.level:
            record: dict[str, object] = {"mode": "auto", "level": level, "reason": reason, "at": time.time(),
                                         "by": "detector", "previous": self.level, "registration": self.registration}
            logs.event(log, "level_changed", logging.WARNING, mode="auto", defense_level=level,
                       previous=self.level, reason=reason, by="detector")
            self.audit.record("detector", "level.detected", level, previous=self.level, reason=reason)
            try:
                await self.store.set_level(record)
            except Exception as exc:  # the Store is away: this process defends itself meanwhile
                logs.event(log, "level_not_shared", logging.WARNING, defense_level=level, error=repr(exc))
                self.record, self.level = record, level
                return
            await self.refresh()

    async def set_registration(self, mode: str, reason: str, by: str) -> dict[str, object]:
        """Pin the sign-up mode (open, queued, limited, closed), or hand it back to the policy with "auto"."""
        if mode not in (*REGISTRATION_MODES, "auto"):
            raise ValueError(f"registration must be one of {', '.join((*REGISTRATION_MODES, 'auto'))}")
        record: dict[str, object] = {**self.record, "registration": mode, "reason": reason, "at": time.time(),
                                     "by": by, "previous_registration": self.registration}
        record.pop("previous", None)
        await self.store.set_level(record)
        logs.event(log, "registration_changed", logging.WARNING, registration=mode, previous=self.registration,
                   reason=reason, by=by)
        self.audit.record(by, "registration.set", mode, previous=self.registration, reason=reason)
        await self.refresh()
        return record
