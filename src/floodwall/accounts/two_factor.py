"""Two-factor sign-in: TOTP (RFC 6238, with pyotp; any authenticator app) and ten one-time recovery codes.

Turning it on takes two steps: a new secret travels to the owner in a signed setup token (nothing is
stored yet), and is kept only when they send back a code it makes. At sign-in a code is accepted in the
current 30-second step or the one either side (clock drift), once: a code seen is spent for the whole
window, so one read over a shoulder cannot be used again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
import unicodedata

import pyotp
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession as DbSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from floodwall.accounts.activity import Client, record_activity
from floodwall.accounts.models import RecoveryCode, User
from floodwall.db.base import utcnow
from floodwall.db.signing import Signer
from floodwall.errors import ApiError
from floodwall.state.store import Store, use_once

SETUP_PURPOSE = "totp-setup"
SETUP_LIFETIME = 600
RECOVERY_CODES = 10
ISSUER = "floodwall"


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().lower().replace("-", "").encode()).hexdigest()


def code_required() -> ApiError:
    return ApiError(401, "Enter the 6-digit code from your authenticator app, or one of your recovery codes.",
                    "totp_required", param="totp")


class TwoFactor:
    def __init__(self, db: async_sessionmaker[DbSession], signer: Signer, store: Store) -> None:
        self.db = db
        self.signer = signer
        self.store = store

    def setup(self, user_id: int, email: str) -> dict[str, str]:
        """A new secret for the owner's app, and the token that carries it to `enable`."""
        secret = pyotp.random_base32()
        return {"secret": secret,
                "otpauth_uri": pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER),
                "setup_token": self.signer.dumps(SETUP_PURPOSE, {"u": user_id, "s": secret})}

    def reopen(self, user_id: int, setup_token: str) -> dict[str, str] | None:
        """The set-up a token carries (to show it again after a wrong code), or None."""
        payload = self.signer.loads(SETUP_PURPOSE, setup_token, max_age=SETUP_LIFETIME)
        if not isinstance(payload, dict) or payload.get("u") != user_id or not isinstance(payload.get("s"), str):
            return None
        secret = payload["s"]
        return {"secret": secret, "otpauth_uri": pyotp.TOTP(secret).provisioning_uri(issuer_name=ISSUER),
                "setup_token": setup_token}

    async def enable(self, user_id: int, setup_token: str, code: str, client: Client) -> list[str]:
        """Keep the secret once a code it makes comes back: the recovery codes, shown this once."""
        setup = self.reopen(user_id, setup_token)
        if setup is None:
            raise ApiError(400, "The set-up has expired or is not yours: start again.", "invalid_token",
                           param="setup_token")
        if not await self._fresh_code(user_id, setup["secret"], code):
            raise ApiError(400, "That code is not the one your app shows now: check the app and the device's "
                           "clock, and try again.", "invalid_totp", param="code")
        codes = ["-".join((secrets.token_hex(3)[:5], secrets.token_hex(3)[:5])) for _ in range(RECOVERY_CODES)]
        async with self.db() as db:
            user = await db.get(User, user_id)
            if user is None or user.totp_secret:
                raise ApiError(409, "Two-factor sign-in is on already.", "totp_enabled")
            user.totp_secret = setup["secret"]
            await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
            db.add_all([RecoveryCode(user_id=user_id, code_hash=_code_hash(c)) for c in codes])
            record_activity(db, user_id, "totp_enabled", client, {"alert": True})
            await db.commit()
        return codes

    async def disable(self, user_id: int, client: Client) -> None:
        async with self.db() as db:
            await db.execute(update(User).where(User.id == user_id).values(totp_secret=None))
            await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
            record_activity(db, user_id, "totp_disabled", client, {"alert": True})
            await db.commit()

    async def confirm(self, user_id: int, code: str, client: Client) -> bool:
        """Whether `code` is the account's second factor now (a recovery code is spent), for a change that
        needs it (turning two-factor off)."""
        async with self.db() as db:
            user = await db.get(User, user_id)
            if user is None or not user.totp_secret:
                return False
            found = await self.check(db, user, code, client)
            await db.commit()
            return found

    async def enabled(self, user_id: int) -> bool:
        async with self.db() as db:
            return bool(await db.scalar(select(User.totp_secret).where(User.id == user_id)))

    async def check(self, db: DbSession, user: User, code: str, client: Client) -> bool:
        """Whether `code` is this account's second factor now: a fresh TOTP code, or an unused recovery code
        (then spent, and recorded)."""
        code = unicodedata.normalize("NFKC", code).strip()
        if user.totp_secret and code.isascii() and code.isdigit() and len(code) == 6:
            return await self._fresh_code(user.id, user.totp_secret, code)
        if not 10 <= len(code) <= 12:
            return False
        # spent in the one statement that checks it: of two sign-ins racing with one code, one changes the row
        spent = await db.execute(update(RecoveryCode).where(
            RecoveryCode.user_id == user.id, RecoveryCode.code_hash == _code_hash(code),
            RecoveryCode.used_at.is_(None)).values(used_at=utcnow()))
        if getattr(spent, "rowcount", 0) != 1:
            return False
        left = await db.scalar(select(func.count()).select_from(RecoveryCode).where(
            RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None)))
        record_activity(db, user.id, "recovery_code_used", client, {"alert": True, "codes_left": left or 0})
        return True

    async def _fresh_code(self, user_id: int, secret: str, code: str) -> bool:
        # digits as typed on any keyboard (full width too); anything else is not a code (and compare_digest
        # takes ASCII only: a code of other characters was a 500)
        code = unicodedata.normalize("NFKC", code).strip()
        if not (code.isascii() and code.isdigit() and len(code) == 6):
            return False
        totp = pyotp.TOTP(secret)
        now = time.time()
        for step in (0, -1, 1):
            at = now + step * totp.interval
            if hmac.compare_digest(totp.at(at), code.strip()):
                # spent for the window it was accepted in (three steps): no replay
                step_number = totp.timecode(dt.datetime.fromtimestamp(at, dt.UTC))
                return await use_once(self.store, "totp/used", f"{user_id}:{step_number}", 3 * totp.interval)
        return False
