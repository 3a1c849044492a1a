"""The login guard: failed sign-ins counted per address, per account and per device before any password is
hashed (the `login-failure` rules of the edge policy), the device cookies that keep owners signing in during
a wave, and the service's failed-login figures for the operator and the detector.

Each attempt spends on its buckets first and a right password gives the spending back: concurrent guesses
cannot slip past a limit between a check and a count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import secrets
from collections.abc import Callable
from typing import Any

from floodwall import cookies
from floodwall.accounts.service import normalise_email
from floodwall.db.signing import Signer
from floodwall.errors import ApiError
from floodwall.identity import Networks
from floodwall.limits import Bucket, Caller, LimitRules, first_refusal
from floodwall.state.store import Store
from floodwall.telemetry.traffic import Traffic, event_key

DEVICE_COOKIE = cookies.DEVICE
DEVICE_LIFETIME = dt.timedelta(days=365)
# accounts one browser is remembered for (a shared family computer)
DEVICE_ACCOUNTS = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    """What a browser's device cookie says: its id, and the accounts it has signed in to, each as
    "LOGIN:STAMP", the stamp naming the password it signed in with (see LoginGuard.stamp)."""

    id: str
    logins: tuple[str, ...] = ()

    def knows(self, login: str) -> bool:
        return any(entry.partition(":")[0] == login for entry in self.logins)


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    login: str
    device: Device
    known: bool  # this device has signed in to this account before
    buckets: tuple[Bucket, ...]
    caller: Caller


class LoginGuard:
    def __init__(self, policy: LimitRules, store: Store, level: Callable[[], str], signer: Signer,
                 networks: Networks | None = None, traffic: Traffic | None = None) -> None:
        self.policy = policy
        self.store = store
        self.level = level
        self.signer = signer
        self.networks = networks or Networks()
        self.traffic = traffic or Traffic()
        # rules counting every unknown device against one account: their refusal says how the owner gets in
        self._account_wide = policy.rule_names("login", excluding_tier="known-device")

    def login_ident(self, email: str) -> str:
        """The key an e-mail is counted under: keyed, so the store never holds an address or a guessable hash."""
        return self.signer.mac("login", normalise_email(email)[:320])[:24]

    def device(self, cookie: str | None) -> Device:
        payload = self.signer.loads("device", cookie or "", max_age=int(DEVICE_LIFETIME.total_seconds()))
        if isinstance(payload, dict) and isinstance(payload.get("d"), str) and isinstance(payload.get("a"), list):
            return Device(payload["d"][:32], tuple(str(a) for a in payload["a"][:DEVICE_ACCOUNTS]))
        return Device(secrets.token_urlsafe(12))

    def known_device(self, cookie: str) -> str | None:
        """The device's id when the cookie is ours and has signed in to an account (the gate's question)."""
        device = self.device(cookie)
        return device.id if device.logins else None

    async def begin(self, email: str, address: str, cookie: str | None, gate_tier: str = "unknown-device",
                    vouched: bool = False) -> Attempt:
        """Count the attempt as a failure in advance; refuse it, before any database or hash, when a limit stands.
        An attempt the gate let through on its device's allowance (`gate_tier` known-device) for an account the
        device has not signed in to is charged to the gate's unknown-device rules now, as it would have been.
        A `vouched` attempt (it carries a good confirmation link for the address) counts as a known device's."""
        login = self.login_ident(email)
        device = self.device(cookie)
        known = device.knows(login) or vouched
        ip, network = self.networks.text_keys(address)
        if gate_tier == "known-device" and not known:
            gate_buckets = self.policy.buckets("auth-login", self.level(), Caller(ip, network, "unknown-device",
                                                                                   None, None))
            if gate_buckets:
                refusal = first_refusal("auth-login", gate_buckets, await self.store.hit(gate_buckets))
                if refusal is not None:
                    raise refusal
        caller = Caller(ip, network, "known-device" if known else "unknown-device", None, None, login, device.id)
        buckets = tuple(self.policy.buckets("login-failure", self.level(), caller))
        if buckets:
            verdicts = await self.store.hit(buckets)
            refused = [(v.retry_after, b.rule) for b, v in zip(buckets, verdicts, strict=True) if not v.allowed]
            if refused:
                self.traffic.event("login.throttled")
                wait, rule = max(refused)
                raise _locked(rule, wait) if rule in self._account_wide else _throttled(rule, wait)
        return Attempt(login, device, known, buckets, caller)

    async def succeeded(self, attempt: Attempt, password_hash: str) -> str:
        """Give back what the attempt spent; the device cookie to set, now knowing this account."""
        self.traffic.event("login.succeeded")
        await self.release(attempt)
        return self.remember(attempt.device, attempt.login, password_hash)

    def stamp(self, password_hash: str) -> str:
        """A tag of the account's password (of its hash, salt and all: nothing quick to guess from): a device
        that signed in before the password changed is known for counting, but not trusted to skip a
        confirmation (sign_in_codes.py), until it signs in with the new one."""
        return self.signer.mac("device-stamp", password_hash)[:12]

    async def failed_stale(self, attempt: Attempt, password_hash: str | None) -> None:
        """A wrong password from a device known to the account only by an old password (or by none the
        account has): its failure moves from the known-device rules to the unknown-device ones, so that
        devices minted while a thief knew the password cannot spend the owner's own devices' allowance."""
        if not attempt.known or (password_hash is not None and
                                 self.current(attempt.device, attempt.login, password_hash)):
            return
        unknown = self.policy.buckets("login-failure", self.level(), attempt.caller._replace(tier="unknown-device"))
        await self.store.charge([*(b.refund() for b in attempt.buckets), *unknown])

    def current(self, device: Device, login: str, password_hash: str) -> bool:
        """The device signed in to this account with its present password."""
        return f"{login}:{self.stamp(password_hash)}" in device.logins

    def failed(self) -> None:
        self.traffic.event("login.failed")

    async def release(self, attempt: Attempt) -> None:
        """Give back what an attempt spent when its password was never checked (the hashing pool was full)."""
        if attempt.buckets:
            await self.store.charge([b.refund() for b in attempt.buckets])

    def remember(self, device: Device, login: str, password_hash: str) -> str:
        """The device cookie's new value: this device knows this account (most recent first)."""
        entry = f"{login}:{self.stamp(password_hash)}"
        logins = (entry, *[known for known in device.logins if known.partition(":")[0] != login])[:DEVICE_ACCOUNTS]
        return self.signer.dumps("device", {"d": device.id, "a": list(logins)})

    def figures(self) -> dict[str, Any]:
        """Sign-in outcomes over the last minute in this process, and the share of checked ones that failed."""
        totals = self.traffic.recent(60)
        succeeded, failed, throttled = (totals.get(event_key(f"login.{k}"), 0)
                                        for k in ("succeeded", "failed", "throttled"))
        checked = succeeded + failed
        return {"window_seconds": 60, "succeeded": succeeded, "failed": failed,
                "throttled": throttled, "failed_ratio": round(failed / checked, 4) if checked else 0.0}


def _minutes(wait: float) -> str:
    minutes = math.ceil(wait / 60)
    return "a minute" if minutes <= 1 else f"{minutes} minutes"


def _throttled(rule: str, wait: float) -> ApiError:
    return ApiError(429, f"Too many failed sign-in attempts. Please wait {_minutes(wait)} and try again.",
                    "login_throttled", retry_after=math.ceil(wait), reason=rule)


def _locked(rule: str, wait: float) -> ApiError:
    # the same words whether or not an account has this address: the refusal must not tell which exist
    return ApiError(429, "Too many failed sign-ins to this account from devices it has not been used on. "
                    "If it is yours, sign in from a device you have used before, or wait "
                    f"{_minutes(wait)} and try again.", "login_throttled", retry_after=math.ceil(wait), reason=rule)
