"""Confirming a sign-in from a new device by a code sent to the account's e-mail, at the levels the policy's
`[sign_in] new_device` says (by default only under attack), after Mastodon's sign-in tokens: a stuffing
wave holding a leaked password still cannot sign in, while owners on the devices they have used sign in as
before.

The code is derived, not stored: an HMAC of the account and a ten-minute window, good for the window it was
made in and the next. At most one message per account per window, whoever asks: a wave cannot flood the
owner's inbox. Wrong codes are failed sign-ins (the login guard's limits), so guessing is hopeless.
"""

from __future__ import annotations

import hmac
import time
import unicodedata
from typing import Any, Literal

import msgspec

from floodwall.accounts.activity import Client
from floodwall.accounts.mail import Mailer
from floodwall.config import typed
from floodwall.db.signing import Signer
from floodwall.errors import ApiError
from floodwall.levels import LEVELS, Level
from floodwall.state.store import Store, use_once

WINDOW = 600  # seconds a code is made for; it is also accepted in the next window
DIGITS = 6

# what a right password from a device new to the account needs, per level (the policy's [sign_in])
NewDeviceMode = Literal["allow", "confirm"]


class _SignInTable(msgspec.Struct, forbid_unknown_fields=True):
    new_device: dict[Level, NewDeviceMode] = {}


def new_device_modes(data: Any, where: str) -> dict[str, str]:
    """[sign_in] new_device: per level, allow or confirm (levels not named: allow)."""
    modes = typed(_SignInTable, data, where).new_device
    return {level: modes.get(level, "allow") for level in LEVELS}  # type: ignore[call-overload]



class SignInCodes:
    def __init__(self, signer: Signer, mailer: Mailer, store: Store) -> None:
        self.signer = signer
        self.mailer = mailer
        self.store = store

    def code(self, user_id: int, window: int) -> str:
        digest = self.signer.mac("sign-in-code", f"{user_id}|{window}")
        return str(int(digest[:15], 16) % 10**DIGITS).zfill(DIGITS)

    async def require(self, user_id: int, email: str, given: str, client: Client) -> None:
        """Return if `given` is this account's code; else mail one (once a window) and refuse. The owner is
        mailed whatever code came with the right password: the answer tells a right password from a wrong
        one (as GitHub's and Mastodon's do), so the owner must always hear of it."""
        window = int(time.time()) // WINDOW
        # digits as a phone's keyboard may type them (full width): NFKC makes them ASCII
        given = unicodedata.normalize("NFKC", given[:32]).strip()
        if given.isascii() and given.isdigit() and \
                any(hmac.compare_digest(given, self.code(user_id, w)) for w in (window, window - 1)):
            return
        if await use_once(self.store, "sign-in-code/mail", f"{user_id}|{window}", WINDOW):
            self.mailer.send_later(email, "Your sign-in code", (
                f"Someone, hopefully you, entered your password on a device this account has not been used on "
                f"(address {client.ip}). The service is under attack, so new devices confirm by e-mail.\n\n"
                f"Your code: {self.code(user_id, window)}\n\nIt works for about ten minutes. If it was not you, "
                "your password is known to someone else: change it now, and turn on two-factor sign-in.\n"))
        if given:
            raise ApiError(401, "That code is not right, or it has expired. Enter the code from the latest "
                           "message we sent to your e-mail address.", "invalid_email_code", param="email_code")
        raise ApiError(401, "This device has not signed in to your account before, and the service is under "
                       "attack: we sent a code to your e-mail address. Enter it to sign in.",
                       "email_code_required", param="email_code")
