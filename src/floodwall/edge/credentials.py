"""The credentials a request carries, read from its raw headers before routing: an API key (Bearer) or
our session cookie, and any one cookie's value, bounded whatever the client sends."""

from __future__ import annotations

from starlette.types import Scope

from floodwall import cookies

SESSION_COOKIE = cookies.prefix(cookies.SESSION)
DEVICE_COOKIE = cookies.prefix(cookies.DEVICE)


def credential(scope: Scope, session: bytes = SESSION_COOKIE) -> tuple[str | None, bool]:
    """The API key (Bearer) or the session cookie the request carries, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, secret = value.partition(b" ")
            if scheme.lower() == b"bearer" and secret.strip():
                return secret.strip().decode("latin-1"), True
    return cookie_value(scope, session), False


def cookie_value(scope: Scope, name: bytes) -> str | None:
    """One cookie's value (the last one sent), read from the raw headers, at most 4 KiB of it: found from the
    right with rfind, not by splitting every pair (a Cookie header of 4,000 pairs cost 2 ms)."""
    found = None
    for header, value in scope["headers"]:
        if header == b"cookie":
            at, tries = value.rfind(name), 16
            while at > 0 and value[at - 1:at] not in (b";", b" ", b"\t"):  # "xfw_session=" is not ours
                tries -= 1
                at = value.rfind(name, 0, at) if tries else -1  # 16 look-alikes: none is, for this header
            if at >= 0:
                end = value.find(b";", at)
                found = value[at + len(name):end if end >= 0 else len(value)][:4096].strip().decode("latin-1")
    return found
