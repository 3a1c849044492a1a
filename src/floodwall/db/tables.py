"""The tables that are no one area's: server secrets, the audit trail and token usage. Each area's own
tables live with it (accounts/models.py, status/models.py); Alembic migrations create them all."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from floodwall.db.base import Base, UTCDateTime, utcnow


class ServerSecret(Base):
    """Keys the server makes for itself (the signing key): shared by every process using the database."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """One operator or automatic action: a level change, a ban, an incident, a user disabled."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")


class Usage(Base):
    """The token usage of `requests` inference calls by one principal to one endpoint and model with one
    outcome, as the model server reported it: the calls of a moment (inference/usage.py) share a row."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_user_at", "user_id", "at"), Index("ix_usage_key", "key_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # null for the web chat (session), otherwise the API key used
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    endpoint: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(20), default="ok")
    requests: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")
