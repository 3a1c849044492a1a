"""The account service: registration, login, sessions, API keys, password changes, the activity log.

Routes call these methods and never touch the tables themselves.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import re2
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession as DbSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from floodwall.accounts.activity import Client, record_activity
from floodwall.accounts.alerts import Alerts
from floodwall.accounts.blocklists import Blocklists
from floodwall.accounts.models import ActivityEvent, ApiKey, RecoveryCode, Session, User
from floodwall.accounts.passwords import Passwords
from floodwall.accounts.two_factor import TwoFactor, code_required
from floodwall.cache import Missing, TTLCache
from floodwall.db.base import utcnow
from floodwall.db.engine import unavailable, unreachable
from floodwall.db.tables import Usage
from floodwall.errors import ApiError
from floodwall.principal import Principal
from floodwall.text import has_controls, inert

KEY_PREFIX = "fw_"
# the visible part of a key in listings: "fw_" and the first 8 characters of the secret
VISIBLE_PREFIX_LENGTH = len(KEY_PREFIX) + 8
MAX_PASSWORD_LENGTH = 1024
SESSION_SECRET_LENGTH = 43  # secrets.token_urlsafe(32)
KEY_USE_PRECISION = 60.0  # seconds: how stale a key's last_used_at may be (the pages show it to the minute)
MAX_KEYS_REMEMBERED = 100_000
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# a local part, and a domain of two or more DNS labels: what can receive mail, not all RFC 5322 allows
_EMAIL = re2.compile(rf"^[^@\s]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$")


# the right password with wrong second-factor codes this many times within this many seconds: the owner is mailed
WRONG_CODES_ALERT = 3
WRONG_CODES_WINDOW = 900


def _aware(moment: dt.datetime) -> dt.datetime:
    """A datetime read through func.coalesce (no column type to make it aware on SQLite): UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _shaped(secret: str, is_key: bool) -> bool:
    """Whether a credential is shaped like one we make: anything else costs no query (a query is some 2-4 ms
    of the event loop's time in SQLAlchemy, and the cookie and the header are the client's to write)."""
    if is_key:
        return secret.startswith(KEY_PREFIX) and len(secret) <= 200
    return len(secret) == SESSION_SECRET_LENGTH and secret.isascii() and \
        secret.replace("-", "").replace("_", "").isalnum()


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _principal(user: User, key_id: int | None = None, session_id: int | None = None) -> Principal:
    return Principal(user.id, user.email, user.created_at, user.is_admin, key_id, session_id,
                     user.email_verified_at is not None)


def normalise_email(email: str) -> str:
    # a control character never matches an account (none was let in), and no NUL reaches PostgreSQL
    return inert(email.strip().lower())


class AccountService:
    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        passwords: Passwords,
        *,
        session_lifetime: float,
        session_idle_timeout: float = 7 * 86400.0,
        min_password_length: int = 8,
        blocklists: Blocklists | None = None,
        key_cache_ttl: float = 5.0,
        alerts: Alerts | None = None,
        two_factor: TwoFactor | None = None,
    ) -> None:
        self.db = db
        self.passwords = passwords
        self.session_lifetime = dt.timedelta(seconds=session_lifetime)
        self.session_idle = dt.timedelta(seconds=session_idle_timeout)
        # how stale last_seen_at may get before a lookup writes it again: a write an hour a session at most
        self.seen_every = min(dt.timedelta(hours=1), self.session_idle / 10)
        self.min_password_length = min_password_length
        self.blocklists = blocklists or Blocklists()
        self.alerts = alerts
        self.two_factor = two_factor
        # API keys are looked up on every /v1 call: keep the answers (unknown keys too) for a few seconds
        self.keys: TTLCache[Principal | None] = TTLCache(key_cache_ttl, max_entries=100_000)
        self.sessions: TTLCache[Principal | None] = TTLCache(key_cache_ttl, max_entries=100_000)
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        self._keys_used: dict[int, float] = {}  # key id: when this process last wrote its last_used_at

    # registration and login

    def check_password_rules(self, password: str, param: str = "password") -> None:
        if len(password) < self.min_password_length:
            raise ApiError(400, f"The password must have at least {self.min_password_length} characters.",
                           "weak_password", param=param)
        if len(password) > MAX_PASSWORD_LENGTH:
            raise ApiError(400, f"The password must have at most {MAX_PASSWORD_LENGTH} characters.",
                           "invalid_password", param=param)
        if self.blocklists.is_common(password):
            raise ApiError(400, "That password is among the most common ones, which attackers try first. "
                           "Please choose another (a few unrelated words make a strong one).", "password_too_common",
                           param=param)

    async def register(self, email: str, password: str, client: Client) -> User:
        """A new account; 409 email_taken for a taken address, after hashing the password all the same."""
        if has_controls(email):
            raise ApiError(400, "That does not look like an e-mail address.", "invalid_email", param="email")
        email = normalise_email(email)
        if len(email) > 254 or not email.isprintable() or not _EMAIL.match(email):  # no controls, no surrogates
            raise ApiError(400, "That does not look like an e-mail address.", "invalid_email", param="email")
        if self.blocklists.is_disposable(email):
            raise ApiError(400, "Sign-ups from disposable e-mail addresses are not accepted. Please use an address "
                           "you keep.", "disposable_email", param="email")
        self.check_password_rules(password)
        user = User(email=email, password_hash=await self.passwords.hash(password))
        async with self.db() as db:
            db.add(user)
            try:
                await db.flush()
            except IntegrityError:
                raise ApiError(409, "An account with this e-mail address already exists. Log in instead.",
                               "email_taken", param="email") from None
            record_activity(db, user.id, "account_created", client)
            await db.commit()
        return user

    async def authenticate(self, email: str, password: str, client: Client, new_device: bool = False,
                           second_factor: str = "",
                           confirm_device: Callable[[User], Awaitable[None]] | None = None,
                           unconfirmed: Callable[[User], Awaitable[bool]] | None = None) -> User:
        """The account if the password (and, where two-factor sign-in is on, the code) is right; the same
        refusal, at the same cost, for an unknown e-mail. `confirm_device(user)`, for an account without
        two-factor sign-in, raises unless the device is confirmed (sign_in_codes.py). Where addresses are
        confirmed by mail (`unconfirmed` given), an unconfirmed account signs in only by confirming: the right
        password and the mailed link's token, `unconfirmed(user)` True. Without the token the right password
        gets the wrong-password answer (`unconfirmed` mails the link): else a sign-up with a password of one's
        own, then a sign-in with it, would tell a new address from a taken one."""
        async with self.db() as db:
            user = await db.scalar(select(User).where(User.email == normalise_email(email)))
        password = password[:MAX_PASSWORD_LENGTH]
        # a device that signed in before goes ahead in the hashing queue: a stuffing wave cannot crowd it out
        ok = await self.passwords.verify(user.password_hash if user else None, password, priority=not new_device)
        hint = unconfirmed is not None
        if user is None:
            raise _invalid_credentials(hint)
        async with self.db() as db:
            if not ok or user.disabled:
                record_activity(db, user.id, "login_failed", client, {"why": "disabled" if ok else "wrong_password"})
                if self.alerts and not ok:
                    await self.alerts.failed_sign_in(db, user.id, user.email, client)
                await db.commit()
                raise _invalid_credentials(hint)
            confirming = unconfirmed is not None and user.email_verified_at is None
            if unconfirmed is not None and confirming and not await unconfirmed(user):
                record_activity(db, user.id, "login_failed", client, {"why": "unconfirmed"})
                await db.commit()
                raise _invalid_credentials(hint)
            if user.totp_secret:
                if not second_factor:
                    raise code_required()
                if self.two_factor is None or not await self.two_factor.check(db, user, second_factor, client):
                    record_activity(db, user.id, "login_failed", client, {"why": "wrong_code"})
                    await db.commit()
                    await self._wrong_codes(db, user, client)
                    raise ApiError(401, "That code is not right, or it was used already.", "invalid_totp",
                                   param="totp")
            elif confirm_device is not None and not confirming:  # the mailed link just confirmed the device too
                try:
                    await confirm_device(user)
                except ApiError as refusal:
                    if refusal.code == "invalid_email_code":
                        record_activity(db, user.id, "login_failed", client, {"why": "wrong_email_code"})
                        await db.commit()
                    raise
            if self.passwords.needs_rehash(user.password_hash):
                user.password_hash = await self.passwords.hash(password)
                await db.execute(update(User).where(User.id == user.id).values(password_hash=user.password_hash))
            if confirming:
                await db.execute(update(User).where(User.id == user.id).values(email_verified_at=utcnow()))
                record_activity(db, user.id, "email_verified", client)
            alert = self.alerts is not None and await self.alerts.sign_in(db, user.id, user.email, client, new_device)
            detail: dict[str, object] = {"new_device": True} if new_device else {}
            record_activity(db, user.id, "login", client, {**detail, "alert": True} if alert else detail or None)
            await db.commit()
        return user

    async def password_hash(self, email: str) -> str | None:
        """The account's password hash (None: no account has this address)."""
        async with self.db() as db:
            found: str | None = await db.scalar(select(User.password_hash).where(User.email == normalise_email(email)))
            return found

    async def wrong_code(self, user_id: int, client: Client) -> None:
        """A wrong second-factor code from a signed-in session (turning two-factor off): recorded, and counted
        toward the owner's alert as wrong codes at sign-in are."""
        async with self.db() as db:
            user = await db.get(User, user_id)
            if user is None:
                return
            record_activity(db, user_id, "login_failed", client, {"why": "wrong_code"})
            await db.commit()
            await self._wrong_codes(db, user, client)

    async def _wrong_codes(self, db: DbSession, user: User, client: Client) -> None:
        """The right password with wrong second-factor codes, WRONG_CODES_ALERT times within WRONG_CODES_WINDOW:
        whoever sends them knows the password. The owner is told (once a burst)."""
        since = utcnow() - dt.timedelta(seconds=WRONG_CODES_WINDOW)
        wrong = await db.scalar(select(func.count()).select_from(ActivityEvent).where(
            ActivityEvent.user_id == user.id, ActivityEvent.kind == "login_failed", ActivityEvent.at >= since,
            ActivityEvent.detail.contains("wrong_code")))
        if (wrong or 0) < WRONG_CODES_ALERT or self.alerts is None:
            return
        told = await db.scalar(select(func.count()).select_from(ActivityEvent).where(
            ActivityEvent.user_id == user.id, ActivityEvent.kind == "wrong_codes_alert", ActivityEvent.at >= since))
        if not told:  # once a window, however the wrong codes raced
            record_activity(db, user.id, "wrong_codes_alert", client)
            await db.commit()
            self.alerts.security_change(
                user.email, "Your password was used with wrong two-factor codes",
                f"Someone signed in to your account with the right password but a wrong two-factor code "
                f"{WRONG_CODES_ALERT} times in {WRONG_CODES_WINDOW // 60} minutes. Your password is known to them: "
                "change it now.", client)

    async def change_password(self, principal: Principal, current: str, new: str, client: Client) -> str:
        """The new password's hash, once set."""
        await self.check_password(principal, current)
        return await self.set_password(principal.user_id, new, client, "password_changed",
                                       keep_session=principal.session_id)

    async def check_password(self, principal: Principal, current: str, param: str = "current_password") -> None:
        """The signed-in owner proves it is them again before a change that matters."""
        async with self.db() as db:
            user = await db.get(User, principal.user_id)
        if user is None or not await self.passwords.verify(user.password_hash, current[:MAX_PASSWORD_LENGTH]):
            raise ApiError(400, "The current password is not right.", "invalid_current_password", param=param)

    async def set_password(self, user_id: int, new: str, client: Client, kind: str,
                           keep_session: int | None = None, replacing: str | None = None,
                           confirms_email: bool = False) -> str:
        """A new password (recorded as `kind`); every session but `keep_session` is signed out. Its hash; ""
        when `replacing` (the hash expected now) is no longer the account's, and nothing changed.
        `confirms_email`: the change came by a link mailed to the address, which it confirms."""
        self.check_password_rules(new, "new_password")
        new_hash = await self.passwords.hash(new)
        async with self.db() as db:
            where = [User.id == user_id] + ([User.password_hash == replacing] if replacing is not None else [])
            changed = await db.execute(update(User).where(*where).values(password_hash=new_hash))
            if getattr(changed, "rowcount", 0) != 1:
                return ""
            # someone who knew the old password must not stay signed in elsewhere
            await db.execute(
                update(Session)
                .where(Session.user_id == user_id, Session.revoked_at.is_(None), Session.id != (keep_session or 0))
                .values(revoked_at=utcnow())
            )
            record_activity(db, user_id, kind, client)
            if confirms_email:
                await self._take_over(db, user_id, client)
            await db.commit()
        self.sessions.clear()
        self.keys.clear()
        return new_hash

    async def _take_over(self, db: DbSession, user_id: int, client: Client) -> None:
        """A link mailed to the address confirms it. If it was not confirmed before, whoever set the account up
        may not have been the address's owner (a squatter, or an account made before confirmation was asked):
        what they set up goes with the password and the sessions, their API keys and second factor."""
        confirmed = await db.execute(update(User).where(User.id == user_id, User.email_verified_at.is_(None))
                                     .values(email_verified_at=utcnow(), totp_secret=None))
        if not getattr(confirmed, "rowcount", 0):
            return
        keys = await db.execute(update(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                                .values(revoked_at=utcnow()))
        await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        record_activity(db, user_id, "email_verified", client,
                        {"keys_revoked": getattr(keys, "rowcount", 0), "alert": True})

    # sessions

    async def create_session(self, user: User, client: Client) -> str:
        secret = secrets.token_urlsafe(32)  # SESSION_SECRET_LENGTH characters of the URL-safe alphabet
        async with self.db() as db:
            db.add(Session(token_hash=token_hash(secret), user_id=user.id, ip=client.ip,
                           user_agent=client.user_agent, expires_at=utcnow() + self.session_lifetime))
            await db.commit()
        return secret

    def cached_principal(self, secret: str, is_key: bool) -> tuple[bool, Principal | None]:
        """(True, answer) when the cache knows this key or session, (False, None) when only the database does."""
        found = (self.keys if is_key else self.sessions).get(token_hash(secret))
        return (False, None) if isinstance(found, Missing) else (True, found)

    async def session_principal(self, secret: str) -> Principal | None:
        if not _shaped(secret, False):
            return None
        digest = token_hash(secret)
        cached = self.sessions.get(digest)
        if not isinstance(cached, Missing):
            return cached
        return await self._single_flight(digest, self._load_session, self.sessions)

    async def uncached_principal(self, secret: str, is_key: bool) -> Principal | None:
        """The answer key_principal or session_principal would give, leaving the cache as it was (what
        /admin/api/explain asks: an explanation changes nothing)."""
        if not _shaped(secret, is_key):
            return None
        known, cached = self.cached_principal(secret, is_key)
        if known:
            return cached
        return await (self._load_key if is_key else self._load_session)(token_hash(secret))

    def lookup_pending(self, secret: str) -> bool:
        """A lookup of this credential is already on its way: waiting for it costs no query."""
        return token_hash(secret) in self._lookups

    async def _single_flight(
        self, digest: str, load: Callable[[str], Awaitable[Principal | None]], cache: TTLCache[Principal | None]
    ) -> Principal | None:
        # when a cached key expires under load, every concurrent call misses at once: one query serves them
        pending = self._lookups.get(digest)
        try:
            if pending is None:
                pending = self._lookups[digest] = asyncio.ensure_future(load(digest))
                try:
                    principal = await asyncio.shield(pending)
                    cache.put(digest, principal)
                    return principal
                finally:
                    self._lookups.pop(digest, None)
            return await asyncio.shield(pending)
        except Exception as error:
            if not unreachable(error):
                raise
            # the database away: a key or session seen before keeps working as it last was (a revocation
            # made meanwhile elsewhere is not known until it is back); one never seen cannot be checked
            stale = cache.stale(digest)
            if isinstance(stale, Missing):
                raise unavailable() from None
            return stale

    async def _load_session(self, digest: str) -> Principal | None:
        now = utcnow()
        seen = func.coalesce(Session.last_seen_at, Session.created_at)
        async with self.db() as db:
            row = (await db.execute(
                select(User, Session.id, seen)
                .join(Session, Session.user_id == User.id)
                .where(Session.token_hash == digest, Session.revoked_at.is_(None), Session.expires_at > now,
                       seen > now - self.session_idle, User.disabled.is_(False))
            )).first()
            if row is not None and _aware(row[2]) < now - self.seen_every:
                await db.execute(update(Session).where(Session.id == row[1]).values(last_seen_at=now))
                await db.commit()
        return _principal(row[0], session_id=row[1]) if row else None

    async def end_session(self, principal: Principal, client: Client) -> None:
        async with self.db() as db:
            await db.execute(update(Session).where(Session.id == principal.session_id).values(revoked_at=utcnow()))
            record_activity(db, principal.user_id, "logout", client)
            await db.commit()
        # sessions are cached by secret, which is not at hand here: sign-outs are rare, forget them all
        self.sessions.clear()

    # API keys

    async def create_key(self, principal: Principal, name: str, client: Client) -> tuple[ApiKey, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        if has_controls(name):
            raise ApiError(400, "A key's name cannot hold control characters.", "invalid_name", param="name")
        key = ApiKey(user_id=principal.user_id, name=name[:100], prefix=secret[:VISIBLE_PREFIX_LENGTH],
                     key_hash=token_hash(secret))
        async with self.db() as db:
            db.add(key)
            await db.flush()
            record_activity(db, principal.user_id, "key_created", client,
                            {"key_id": key.id, "prefix": key.prefix, "alert": True})
            await db.commit()
        if self.alerts:
            self.alerts.key_created(principal.email, key.name, key.prefix, client)
        return key, secret

    async def list_keys(self, principal: Principal) -> Sequence[tuple[ApiKey, int, int]]:
        """Live keys, newest first, each with its total prompt and completion tokens."""
        usage = (
            select(Usage.key_id, func.sum(Usage.prompt_tokens).label("p"), func.sum(Usage.completion_tokens).label("c"))
            .group_by(Usage.key_id).subquery()
        )
        async with self.db() as db:
            rows = await db.execute(
                select(ApiKey, func.coalesce(usage.c.p, 0), func.coalesce(usage.c.c, 0))
                .outerjoin(usage, usage.c.key_id == ApiKey.id)
                .where(ApiKey.user_id == principal.user_id, ApiKey.revoked_at.is_(None))
                .order_by(ApiKey.id.desc())
            )
            return [(key, int(p), int(c)) for key, p, c in rows]

    async def revoke_key(self, principal: Principal, key_id: int, client: Client) -> None:
        async with self.db() as db:
            key = await db.get(ApiKey, key_id)
            if key is None or key.user_id != principal.user_id or key.revoked_at is not None:
                raise ApiError(404, f"No API key {key_id} on this account.", "key_not_found", param="id")
            key.revoked_at = utcnow()
            self.keys.pop(key.key_hash)
            record_activity(db, principal.user_id, "key_revoked", client, {"key_id": key.id, "prefix": key.prefix})
            await db.commit()

    async def key_principal(self, secret: str) -> Principal | None:
        if not _shaped(secret, True):
            return None
        digest = token_hash(secret)
        cached = self.keys.get(digest)
        if not isinstance(cached, Missing):
            return cached
        return await self._single_flight(digest, self._load_key, self.keys)

    async def _load_key(self, digest: str) -> Principal | None:
        async with self.db() as db:
            row = (await db.execute(
                select(User, ApiKey.id)
                .join(ApiKey, ApiKey.user_id == User.id)
                .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None), User.disabled.is_(False))
            )).first()
        return _principal(row[0], key_id=row[1]) if row else None

    # activity and usage

    async def activity(self, principal: Principal, limit: int = 100,
                       alerts_since: dt.datetime | None = None) -> Sequence[ActivityEvent]:
        """The account's latest events; with `alerts_since`, only its alerts since then."""
        query = select(ActivityEvent).where(ActivityEvent.user_id == principal.user_id)
        if alerts_since is not None:
            query = query.where(ActivityEvent.at >= alerts_since, ActivityEvent.detail.like('%"alert": true%'))
        async with self.db() as db:
            return list(await db.scalars(query.order_by(ActivityEvent.id.desc()).limit(limit)))

    # sessions

    async def list_sessions(self, principal: Principal) -> Sequence[Session]:
        """The account's live sign-ins, newest first."""
        async with self.db() as db:
            return list(await db.scalars(
                select(Session).where(Session.user_id == principal.user_id, Session.revoked_at.is_(None),
                                      Session.expires_at > utcnow()).order_by(Session.id.desc()).limit(200)))

    async def revoke_sessions(self, principal: Principal, client: Client, session_id: int | None = None) -> int:
        """Sign out one of the account's sessions (`session_id`), or every one but the caller's: how many."""
        query = update(Session).where(Session.user_id == principal.user_id, Session.revoked_at.is_(None))
        if session_id is not None:
            query = query.where(Session.id == session_id)
        elif principal.session_id is not None:
            query = query.where(Session.id != principal.session_id)
        async with self.db() as db:
            count = (await db.execute(query.values(revoked_at=utcnow()))).rowcount  # type: ignore[attr-defined]
            if count:
                record_activity(db, principal.user_id, "sessions_revoked", client,
                                {"count": count, **({"session_id": session_id} if session_id else {})})
            await db.commit()
        self.sessions.clear()  # cached by secret, which is not at hand: forget them all (this worker's)
        return int(count)

    async def usage_totals(self, principal: Principal) -> dict[str, int]:
        async with self.db() as db:
            row = (await db.execute(
                select(func.coalesce(func.sum(Usage.requests), 0), func.coalesce(func.sum(Usage.prompt_tokens), 0),
                       func.coalesce(func.sum(Usage.completion_tokens), 0))
                .where(Usage.user_id == principal.user_id)
            )).one()
        return {"requests": int(row[0]), "prompt_tokens": int(row[1]), "completion_tokens": int(row[2])}

    async def record_usage(self, records: Sequence[dict[str, object]]) -> None:
        # a key's last use is shown to the minute: written at most once a minute a key (the update was half
        # of a write's cost on the event loop, measured: 1.3 of 3.1 ms)
        now = time.monotonic()
        used = self._keys_used
        key_ids = {key for r in records if isinstance(key := r["key_id"], int)
                   and now - used.get(key, -math.inf) >= KEY_USE_PRECISION}
        async with self.db() as db:
            # a Core insert of the table: the ORM's bulk path costs several times as much a row
            await db.execute(insert(cast(Table, Usage.__table__)), list(records))
            if key_ids:
                await db.execute(update(ApiKey).where(ApiKey.id.in_(key_ids)).values(last_used_at=utcnow()))
            await db.commit()
        if len(used) + len(key_ids) > MAX_KEYS_REMEMBERED:
            used.clear()
        used.update(dict.fromkeys(key_ids, now))



def _invalid_credentials(hint: bool = False) -> ApiError:
    # the hint is given to every refusal alike, right password or wrong: it must not tell them apart
    return ApiError(401, "Wrong e-mail or password." + (
        " If the account's address is not confirmed yet and the password is right, a link to confirm it and "
        "sign in is on its way." if hint else ""), "invalid_credentials")
