"""Password reset by e-mail: a signed link, good for an hour, that sets a new password once.

The link carries a fingerprint of the password hash it was made against, so it stops working as soon as
the password changes, its own use included: single use with nothing stored. Asking for a link answers the
same whether or not an account has the address (no enumeration); the message goes out in the background.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession as DbSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from floodwall.accounts.activity import Client
from floodwall.accounts.mail import Mailer
from floodwall.accounts.models import User
from floodwall.accounts.service import AccountService, normalise_email
from floodwall.db.signing import Signer
from floodwall.errors import ApiError

PURPOSE = "password-reset"
LIFETIME = 3600


INVALID_LINK = ApiError(400, "This reset link is not valid, has been used, or has expired. Ask for a new one.",
                        "invalid_token", param="token")

def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


class PasswordReset:
    def __init__(self, db: async_sessionmaker[DbSession], signer: Signer, mailer: Mailer,
                 accounts: AccountService) -> None:
        self.db = db
        self.signer = signer
        self.mailer = mailer
        self.accounts = accounts

    async def _user(self, email: str) -> User | None:
        async with self.db() as db:
            found: User | None = await db.scalar(select(User).where(User.email == normalise_email(email)))
            return found

    async def request(self, base_url: str, email: str, client: Client) -> None:
        """Mail a reset link if an account has this address; nothing happens otherwise."""
        user = await self._user(email)
        if user is None or user.disabled:
            return
        token = self.signer.dumps(PURPOSE, {"u": user.id, "f": _fingerprint(user.password_hash)})
        link = f"{base_url.rstrip('/')}/auth/reset?token={token}"
        self.mailer.send_later(user.email, "Reset your password", (
            f"Someone, hopefully you, asked to reset the password of your account at {base_url} "
            f"(from address {client.ip}).\n\nTo choose a new password, open this link within an hour:\n\n"
            f"{link}\n\nIf it was not you, ignore this message: your password stays as it is.\n"))

    async def check(self, token: str) -> User:
        """The account the link resets; 400 invalid_token for a forged, old or used one."""
        payload = self.signer.loads(PURPOSE, token, max_age=LIFETIME)
        payload = payload if isinstance(payload, dict) else {}
        user: User | None = None
        if isinstance(payload.get("u"), int):
            async with self.db() as db:
                user = await db.get(User, payload["u"])
        if user is None or user.disabled or payload.get("f") != _fingerprint(user.password_hash):
            raise INVALID_LINK
        return user

    async def reset(self, token: str, password: str, client: Client) -> User:
        """Set the new password: every session ends, and the owner is told."""
        user = await self.check(token)
        # the link is good for the password it was made under: set only if that is still the one, so of two
        # resets racing with one link, one changes it
        # the link came to the address: following it confirms the address too
        if not await self.accounts.set_password(user.id, password, client, "password_reset",
                                                replacing=user.password_hash, confirms_email=True):
            raise INVALID_LINK
        self.mailer.send_later(user.email, "Your password was changed", (
            f"The password of your account was reset from address {client.ip}, and every session was signed "
            "out.\n\nIf it was not you, reset it again now (someone can read your e-mail: secure that too).\n"))
        return user
