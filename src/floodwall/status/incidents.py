"""Incidents and their timelines in the database: open one, post an update (resolving is an update with the
status "resolved"), read the recent ones. The status board reads them in the background; views never do."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from floodwall.errors import ApiError
from floodwall.status.models import Incident, IncidentUpdate

STATUSES = ("investigating", "identified", "monitoring", "resolved")
IMPACTS = ("none", "minor", "major", "critical")
# Statuspage's component statuses, best first
COMPONENT_STATUSES = ("operational", "under_maintenance", "degraded_performance", "partial_outage", "major_outage")
COMPONENTS = {"web": "Web app", "api": "API", "registration": "Registration", "login": "Login", "model": "Model"}
KEPT_DAYS = 90


@dataclasses.dataclass(frozen=True)
class Update:
    id: int
    status: str
    body: str
    at: dt.datetime
    by: str


@dataclasses.dataclass(frozen=True)
class Record:
    """An incident as read, with its updates newest first: what the board renders."""

    id: int
    name: str
    status: str
    impact: str
    components: Mapping[str, str]
    automatic: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    monitoring_at: dt.datetime | None
    resolved_at: dt.datetime | None
    updates: tuple[Update, ...]

    @property
    def open(self) -> bool:
        return self.status != "resolved"


def _record(incident: Incident) -> Record:
    return Record(incident.id, incident.name, incident.status, incident.impact, incident.affected, incident.automatic,
                  incident.created_at, incident.updated_at, incident.monitoring_at, incident.resolved_at,
                  tuple(Update(u.id, u.status, u.body, u.created_at, u.by) for u in incident.updates))


def checked(status: object = None, impact: object = None, components: object = None, body: object = None,
            name: object = None) -> None:
    """Refuse what an operator cannot mean, naming the field (400 invalid_request)."""
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"'status' must be one of {', '.join(STATUSES)}.", "invalid_request", param="status")
    if impact is not None and impact not in IMPACTS:
        raise ApiError(400, f"'impact' must be one of {', '.join(IMPACTS)}.", "invalid_request", param="impact")
    if components is not None and not (isinstance(components, dict) and all(
            key in COMPONENTS and value in COMPONENT_STATUSES for key, value in components.items())):
        raise ApiError(400, f"'components' must map some of {', '.join(COMPONENTS)} to one of "
                       f"{', '.join(COMPONENT_STATUSES)}.", "invalid_request", param="components")
    for field, value, limit in (("body", body, 10_000), ("name", name, 200)):
        if value is not None and not (isinstance(value, str) and value.strip() and len(value) <= limit):
            raise ApiError(400, f"'{field}' must be text of 1 to {limit} characters.", "invalid_request",
                           param=field)


class Incidents:
    def __init__(self, db: async_sessionmaker[AsyncSession]) -> None:
        self.db = db

    async def open(self, name: str, body: str, by: str, status: str = "investigating", impact: str = "minor",
                   components: Mapping[str, str] | None = None, automatic: bool = False) -> Record:
        checked(status, impact, dict(components or {}), body, name)
        now = dt.datetime.now(dt.UTC)
        async with self.db() as db, db.begin():
            incident = Incident(name=name.strip(), status=status, impact=impact,
                                components=json.dumps(dict(components or {})), automatic=automatic,
                                created_at=now, updated_at=now,
                                monitoring_at=now if status == "monitoring" else None,
                                resolved_at=now if status == "resolved" else None)
            db.add(incident)
            await db.flush()
            db.add(IncidentUpdate(incident_id=incident.id, status=status, body=body.strip(), created_at=now, by=by))
        found = await self.get(incident.id)
        assert found is not None
        return found

    async def update(self, incident_id: int, status: str, body: str, by: str,
                     components: Mapping[str, str] | None = None, impact: str | None = None) -> Record:
        checked(status, impact, None if components is None else dict(components), body)
        now = dt.datetime.now(dt.UTC)
        async with self.db() as db, db.begin():
            incident = await db.get(Incident, incident_id)
            if incident is None:
                raise ApiError(404, f"There is no incident {incident_id}.", "incident_not_found")
            incident.status = status
            incident.updated_at = now
            if impact is not None:
                incident.impact = impact
            if components is not None:
                incident.components = json.dumps(dict(components))
            if status == "monitoring" and incident.monitoring_at is None:
                incident.monitoring_at = now
            incident.resolved_at = now if status == "resolved" else None
            db.add(IncidentUpdate(incident_id=incident_id, status=status, body=body.strip(), created_at=now, by=by))
        found = await self.get(incident_id)
        assert found is not None
        return found

    async def get(self, incident_id: int) -> Record | None:
        async with self.db() as db:
            incident = await db.scalar(select(Incident).where(Incident.id == incident_id)
                                       .options(selectinload(Incident.updates)))
            return _record(incident) if incident is not None else None

    async def recent(self, days: int = KEPT_DAYS, limit: int = 500) -> Sequence[Record]:
        """The open incidents and those of the last `days`, newest first."""
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        async with self.db() as db:
            rows = (await db.scalars(
                select(Incident).where(or_(Incident.resolved_at.is_(None), Incident.created_at >= since))
                .order_by(Incident.id.desc()).limit(limit).options(selectinload(Incident.updates))
            )).all()
        return [_record(row) for row in rows]
