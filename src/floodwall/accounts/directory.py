"""The operators' view of the accounts: find them, disable or enable one, sign one out everywhere. Each
action lands in the account's own activity log too, so its owner sees what was done and when. A disabled
account's sessions and keys stop working on every process within the principal caches' lifetime (5 s)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from floodwall.accounts.activity import Client, record_activity
from floodwall.accounts.models import ApiKey, Session, User
from floodwall.accounts.service import AccountService
from floodwall.db.base import utcnow
from floodwall.errors import ApiError

OPERATOR = "operator"


class Directory:
    def __init__(self, accounts: AccountService) -> None:
        self.accounts = accounts

    async def find(self, query: str = "", limit: int = 50, user_id: int | None = None) -> list[dict[str, Any]]:
        """Accounts whose e-mail contains `query` (or the one `user_id`), newest first, with their live sessions
        and keys."""
        now = utcnow()
        sessions = (select(func.count()).where(Session.user_id == User.id, Session.revoked_at.is_(None),
                                               Session.expires_at > now).scalar_subquery())
        keys = select(func.count()).where(ApiKey.user_id == User.id, ApiKey.revoked_at.is_(None)).scalar_subquery()
        statement = select(User, sessions, keys).order_by(User.id.desc()).limit(max(1, min(limit, 500)))
        if user_id is not None:
            statement = statement.where(User.id == user_id)
        if query:
            escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            statement = statement.where(func.lower(User.email).like(f"%{escaped}%", escape="\\"))
        async with self.accounts.db() as db:
            rows = (await db.execute(statement)).all()
        return [_user(user, live_sessions, live_keys) for user, live_sessions, live_keys in rows]

    async def set_disabled(self, user_id: int, disabled: bool, by: str) -> dict[str, Any]:
        async with self.accounts.db() as db, db.begin():
            user = await db.get(User, user_id)
            if user is None:
                raise ApiError(404, f"There is no account {user_id}.", "user_not_found")
            user.disabled = disabled
            if disabled:
                await db.execute(update(Session).where(Session.user_id == user_id, Session.revoked_at.is_(None))
                                 .values(revoked_at=utcnow()))
            record_activity(db, user_id, "account_disabled" if disabled else "account_enabled", Client(by, OPERATOR))
        self._forget()
        return await self.find_one(user_id)

    async def sign_out_everywhere(self, user_id: int, by: str) -> int:
        async with self.accounts.db() as db, db.begin():
            if await db.get(User, user_id) is None:
                raise ApiError(404, f"There is no account {user_id}.", "user_not_found")
            result = await db.execute(update(Session).where(Session.user_id == user_id, Session.revoked_at.is_(None))
                                      .values(revoked_at=utcnow()))
            count = int(result.rowcount)  # type: ignore[attr-defined]
            record_activity(db, user_id, "sessions_revoked", Client(by, OPERATOR), {"count": count, "by": "operator"})
        self._forget()
        return count

    async def find_one(self, user_id: int) -> dict[str, Any]:
        found = await self.find(limit=1, user_id=user_id)
        if not found:
            raise ApiError(404, f"There is no account {user_id}.", "user_not_found")
        return found[0]

    def _forget(self) -> None:
        # the caches are keyed by the secrets' hashes, which are not at hand: forget them all (this worker's)
        self.accounts.sessions.clear()
        self.accounts.keys.clear()


def _user(user: User, sessions: int, keys: int) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "created_at": user.created_at.isoformat(), "disabled": user.disabled,
            "email_verified": user.email_verified_at is not None, "two_factor": user.totp_secret is not None,
            "sessions": int(sessions), "keys": int(keys)}
