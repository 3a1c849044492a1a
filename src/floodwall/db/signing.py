"""The server's signing key, and signed tokens made with it (device cookies, waiting-room tickets, challenges).

The key comes from `server.secret_key`, or is made once and kept in the database, so that every worker and
every replica sharing that database signs alike. Each purpose signs with its own derived key (itsdangerous'
salt): a token made for one purpose is worthless for another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from itsdangerous import BadData, BadSignature, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession as DbSession
from sqlalchemy.ext.asyncio import async_sessionmaker

from floodwall.db.tables import ServerSecret

SIGNING_KEY = "signing"
_TOKEN_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def _canonical(token: str) -> bool:
    """Whether `token` is written as dumps() writes it: base64url parts without padding, no spare bits set.
    itsdangerous accepts more (padding, characters it skips, other last characters that decode to the same
    bytes): one token must have one spelling, wherever its text is a key."""
    if not _TOKEN_CHARACTERS.issuperset(token):
        return False
    try:
        return all(base64_encode(base64_decode(part)) == part.encode() for part in token.split(".") if part)
    except BadData:
        return False


class Signer:
    def __init__(self, key: str = "") -> None:
        self._key = key
        self._serializers: dict[str, URLSafeTimedSerializer] = {}

    @property
    def ready(self) -> bool:
        return bool(self._key)

    def use(self, key: str) -> None:
        self._key = key
        self._serializers.clear()

    async def load(self, db: async_sessionmaker[DbSession], configured: str = "") -> None:
        """The configured key, else the database's (made by whichever process starts first)."""
        self.use(configured or await _stored_key(db))

    def _serializer(self, purpose: str) -> URLSafeTimedSerializer:
        found = self._serializers.get(purpose)
        if found is None:
            if not self._key:
                raise RuntimeError("the signing key is not loaded yet")
            found = self._serializers[purpose] = URLSafeTimedSerializer(self._key, salt=f"floodwall.{purpose}")
        return found

    def dumps(self, purpose: str, payload: Any) -> str:
        return self._serializer(purpose).dumps(payload)

    def loads(self, purpose: str, token: str, max_age: int | None = None) -> Any | None:
        """The payload, or None when the token is forged, altered, for another purpose or older than max_age."""
        if not token or len(token) > 4096 or not _canonical(token):
            return None
        try:
            return self._serializer(purpose).loads(token, max_age=max_age)
        except (BadSignature, ValueError, TypeError):
            return None

    def mac(self, purpose: str, message: str) -> str:
        """An HMAC-SHA256 of `message` under the purpose's key, as hex (for formats that fix their own encoding)."""
        if not self._key:
            raise RuntimeError("the signing key is not loaded yet")
        key = hmac.new(self._key.encode(), f"floodwall.{purpose}".encode(), hashlib.sha256).digest()
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


async def _stored_key(db: async_sessionmaker[DbSession]) -> str:
    async with db() as session:
        found = await session.scalar(select(ServerSecret.value).where(ServerSecret.name == SIGNING_KEY))
        if found:
            return found
        try:
            await session.execute(insert(ServerSecret).values(name=SIGNING_KEY, value=secrets.token_urlsafe(48)))
            await session.commit()
        except IntegrityError:  # another worker made it first: use theirs
            await session.rollback()
        value = await session.scalar(select(ServerSecret.value).where(ServerSecret.name == SIGNING_KEY))
    if not value:
        raise RuntimeError("could not load the signing key from the database")
    return value
