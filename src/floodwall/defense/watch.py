"""The once-a-second loop that turns traffic into decisions: it closes this process's second of traffic,
adds it to the Store (where replicas' seconds are summed), reads the whole service's second back, and
hands the figures to the detector. Every replica keeps the detector's baselines; one at a time (a lease
in the Store) moves the level.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable

from floodwall import logs
from floodwall.background import cancel
from floodwall.defense.detector import Detector
from floodwall.defense.signals import figures
from floodwall.levels import LevelControl
from floodwall.state.store import Store
from floodwall.telemetry.traffic import Traffic

log = logging.getLogger("floodwall.defense")
# a second is read back this long after it ends, so that every replica has added its share
SETTLE = 1
LEASE = 5.0


class Watch:
    def __init__(self, traffic: Traffic, store: Store, control: LevelControl, detector: Detector,
                 gauges: Callable[[], dict[str, float]] = dict) -> None:
        self.traffic = traffic
        self.store = store
        self.control = control
        self.detector = detector
        self.gauges = gauges
        self.owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.leading = False
        self.healthy = True
        self.figures: dict[str, float] = {}  # the last second the detector read
        self.second = 0
        self._pending: dict[int, dict[str, int]] = {}  # this process's own seconds, while the Store is away
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="defense-watch")

    async def stop(self) -> None:
        await cancel(self._task)

    async def _loop(self) -> None:
        while True:
            # just past each second's end, by the wall clock, which every replica shares
            await asyncio.sleep(1.0 - time.time() % 1.0 + 0.02)
            try:
                await self.tick(int(time.time()) - 1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must outlive any one second's failure
                logs.event(log, "watch_failed", logging.ERROR, error=repr(exc))

    async def tick(self, second: int) -> None:
        """Close `second` in this process and let the detector read `second - SETTLE`."""
        own = self.traffic.close_second(second)
        self._pending[second] = own
        read = second - SETTLE
        try:
            await self.store.add_traffic(second, own)
            self.leading = await self.store.lead("detector", self.owner, LEASE)
            counts = await self.store.traffic(read)
            self._recovered()
        except Exception as exc:  # the Store is away: this process's own traffic is all there is to read
            self._failed(exc)
            self.leading = True
            counts = self._pending.get(read, {})
        for old in [s for s in self._pending if s < read]:
            del self._pending[old]
        self.second = read
        self.figures = {**figures(counts), **self.gauges()}
        move = self.detector.observe(self.figures, self.control.level)
        if move is not None and self.leading:
            await self.control.detected(move.level, move.reason)

    def _failed(self, exc: Exception) -> None:
        if self.healthy:
            logs.event(log, "watch_store_unreachable", logging.WARNING, error=repr(exc),
                       effect="the detector reads this process's traffic only")
        self.healthy = False

    def _recovered(self) -> None:
        if not self.healthy:
            logs.event(log, "watch_store_recovered")
        self.healthy = True
