"""Who is calling: an account and the key or session it used, and the lookup the gate needs to find one.
A leaf: the gate (edge) and the relay (inference) speak of principals without importing accounts."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: an account, and the API key it used (None for a browser session)."""

    user_id: int
    email: str
    created_at: dt.datetime
    is_admin: bool
    key_id: int | None = None
    session_id: int | None = None
    email_verified: bool = False


class Principals(Protocol):
    """How the gate finds the principal behind a credential (accounts/service.py's AccountService)."""

    def cached_principal(self, secret: str, is_key: bool) -> tuple[bool, Principal | None]:
        """(True, answer) when the answer is in memory, (False, None) when only the database knows."""
        ...

    def lookup_pending(self, secret: str) -> bool:
        """A lookup of this credential is already on its way (waiting for it costs no query)."""
        ...

    async def key_principal(self, secret: str) -> Principal | None: ...

    async def session_principal(self, secret: str) -> Principal | None: ...

    async def uncached_principal(self, secret: str, is_key: bool) -> Principal | None:
        """The answer of the two above, the cache left as it was."""
        ...
