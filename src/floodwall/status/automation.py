"""The incident floodwall posts by itself: opened when the defense level reaches under_attack, updated as
the level moves (monitoring as it falls back, identified again if it rises), resolved once the level has
stayed normal for `resolve_after`. One process does it at a time (a lease in the Store)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from floodwall.config import StatusSettings
from floodwall.db.audit import Audit
from floodwall.levels import LEVELS
from floodwall.status.incidents import Incidents, Record

BY = "floodwall"


class AutoIncidents:
    def __init__(self, settings: StatusSettings, incidents: Incidents, audit: Audit,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.incidents = incidents
        self.audit = audit
        self.clock = clock
        self._calm_since: float | None = None

    async def step(self, level: str, records: Sequence[Record]) -> bool:
        """Move the automatic incident along for this level; True if anything was written."""
        settings = self.settings
        current = next((r for r in records if r.automatic and r.open), None)
        if level == LEVELS[-1]:  # under attack
            self._calm_since = None
            if current is None:
                opened = await self.incidents.open(settings.attack_title, settings.attack_message, BY,
                                                   status="identified", impact="major",
                                                   components={"registration": "degraded_performance"},
                                                   automatic=True)
                self.audit.record(BY, "incident.open", str(opened.id), name=opened.name, automatic=True)
                return True
            if current.status == "monitoring":  # it came back
                await self._post(current, "identified", settings.attack_message)
                return True
            return False
        if current is None:
            return False
        if current.status != "monitoring":
            await self._post(current, "monitoring", settings.monitoring_message)
            return True
        if level != "normal":
            self._calm_since = None
            return False
        now = self.clock()
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since >= settings.resolve_after:
            await self._post(current, "resolved", settings.resolved_message)
            self._calm_since = None
            return True
        return False

    async def _post(self, record: Record, status: str, body: str, components: dict[str, str] | None = None) -> None:
        await self.incidents.update(record.id, status, body, BY, components=components)
        self.audit.record(BY, "incident.resolve" if status == "resolved" else "incident.update", str(record.id),
                          status=status, automatic=True)
