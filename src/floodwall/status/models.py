"""The status tables: incidents and their timeline of updates (Alembic migration 0005 creates them)."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from floodwall.db.base import Base, UTCDateTime, utcnow


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # investigating, identified, monitoring, resolved (Statuspage's words)
    status: Mapped[str] = mapped_column(String(20), index=True)
    impact: Mapped[str] = mapped_column(String(20))  # none, minor, major, critical
    # {component key: status} while the incident is open, as JSON text
    components: Mapped[str] = mapped_column(Text, default="{}")
    # opened by floodwall itself when the defense level reached under_attack
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    monitoring_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # newest first; loaded only when asked for (selectinload), never behind the reader's back
    updates: Mapped[list[IncidentUpdate]] = relationship(order_by="desc(IncidentUpdate.id)", lazy="raise")

    @property
    def affected(self) -> dict[str, str]:
        value = json.loads(self.components) if self.components else {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


class IncidentUpdate(Base):
    __tablename__ = "incident_updates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    by: Mapped[str] = mapped_column(String(100), default="")

