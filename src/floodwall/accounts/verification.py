"""Confirming an account's e-mail address: a signed link sent to it, good for two days. Following it opens
the sign-in form with the link's token: the right password and the token together confirm the address and
sign in. Neither alone does: a squatter who signed up someone else's address knows the password but never
sees the link, and the address's owner who follows an unasked-for link does not know the squatter's
password. Nothing is stored until then; the link names the address it was sent to, so it stops working if
the account's address changes.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession as DbSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from floodwall.accounts.mail import Mailer
from floodwall.accounts.models import User
from floodwall.accounts.service import normalise_email
from floodwall.db.signing import Signer

PURPOSE = "verify-email"
LIFETIME = 2 * 86400


class EmailVerification:
    def __init__(self, db: async_sessionmaker[DbSession], signer: Signer, mailer: Mailer, required: bool) -> None:
        self.db = db
        self.signer = signer
        self.mailer = mailer
        self.required = required

    def link(self, base_url: str, user_id: int, email: str) -> str:
        token = self.signer.dumps(PURPOSE, {"u": user_id, "e": email})
        return f"{base_url.rstrip('/')}/auth/verify?token={token}"

    def send(self, base_url: str, user_id: int, email: str, why: str = "made an account with this address") -> None:
        """Mail the confirmation link (in the background); `why` finishes "Someone, hopefully you, ..."."""
        link = self.link(base_url, user_id, email)
        self.mailer.send_later(email, "Confirm your e-mail address", (
            f"Someone, hopefully you, {why} at {base_url}.\n\n"
            f"To confirm it, open this link within {LIFETIME // 86400} days and sign in with the account's "
            f"password:\n\n{link}\n\n"
            "If it was not you, ignore this message: without the confirmation nobody can sign in to the "
            "account.\n"))

    def taken(self, base_url: str, email: str) -> None:
        """Tell the owner of an address that someone tried to sign up with it (the sign-up itself got the same
        answer as a new address: whether an address has an account is the owner's to know)."""
        self.mailer.send_later(email, "Someone tried to sign up with your address", (
            f"Someone, perhaps you, tried to make a new account at {base_url} with this address. It already has "
            "one, so nothing was made.\n\nIf it was you, log in instead; if you forgot the password, reset it "
            f"at {base_url.rstrip('/')}/forgot (that confirms the address too). If it was not you, there is "
            "nothing to do.\n"))

    async def check(self, token: str) -> User | None:
        """The account a link names, or None for a forged, old or stale link (nothing changes)."""
        payload = self.signer.loads(PURPOSE, token, max_age=LIFETIME)
        if not isinstance(payload, dict) or not isinstance(payload.get("u"), int):
            return None
        async with self.db() as db:
            user = (await db.execute(select(User).where(User.id == payload["u"]))).scalar_one_or_none()
        if user is None or user.disabled or user.email != payload.get("e"):
            return None
        return user

    def vouches(self, token: str, email: str) -> bool:
        """Whether `token` is a good link for the account of `email`, read from the token alone (no database):
        only the address's owner can hold one, so the login guard counts its sign-ins apart from strangers'."""
        payload = self.signer.loads(PURPOSE, token, max_age=LIFETIME) if token else None
        return isinstance(payload, dict) and payload.get("e") == normalise_email(email)
