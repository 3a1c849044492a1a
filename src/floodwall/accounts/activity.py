"""The account's activity log, and where a request came from as the log records it."""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy.ext.asyncio import AsyncSession as DbSession

from floodwall.accounts.models import ActivityEvent
from floodwall.text import inert


@dataclasses.dataclass(frozen=True, slots=True)
class Client:
    """Where a request came from, as the activity log records it."""

    ip: str
    user_agent: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_agent", inert(self.user_agent[:512]))


def record_activity(db: DbSession, user_id: int, kind: str, client: Client,
                    detail: dict[str, object] | None = None) -> None:
    """One line of the account's activity log, in the caller's transaction."""
    db.add(ActivityEvent(user_id=user_id, kind=kind, ip=client.ip, user_agent=client.user_agent,
                         detail=json.dumps(detail) if detail else ""))
