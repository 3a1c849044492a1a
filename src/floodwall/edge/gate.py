"""The gate: plain ASGI before routing. For each request, in a fixed order, like rack-attack:
allow list → deny list → bans → who is calling → limits for (class, level, tier) → the app.

No database on the way: the principal comes from the account service's caches, the level, bans and lists
from the Control snapshot, the limits from the Store (memory: no I/O; Redis: one round trip).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from floodwall import cookies, logs
from floodwall.accounts.service import AccountService, Principal
from floodwall.defense.probing import Probes
from floodwall.defense.scoring import Described, Scorer, load_rules
from floodwall.edge.control import Control
from floodwall.edge.headers import ratelimit, with_headers
from floodwall.edge.identity import Networks, TrustedProxies, client_address
from floodwall.edge.policy import Caller, Policy, classify
from floodwall.edge.refusals import RefusalLog
from floodwall.errors import ApiError, send_error
from floodwall.state.store import Bucket, Store, Verdict
from floodwall.telemetry.traffic import Traffic

log = logging.getLogger("floodwall.edge")

SESSION_COOKIE = cookies.prefix(cookies.SESSION)
DEVICE_COOKIE = cookies.prefix(cookies.DEVICE)
REGISTRATION_CLOSED_MESSAGE = ("Registration is closed for now because of an ongoing attack or very high demand. "
                               "Please try again later. Registered users can log in normally.")
REGISTRATION_BUSY = ("Registration is busy because of high demand or an ongoing attack. Please wait and try "
                     "again. Registered users can log in normally.")
REGISTRATION_CLOSED = ApiError(503, REGISTRATION_CLOSED_MESSAGE, "registration_busy", retry_after=300,
                               reason="registration/closed")


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeInfo:
    """What the gate learnt, left in scope["state"]["edge"] for the routes."""

    klass: str
    address: str
    tier: str
    level: str
    principal: Principal | None


def edge_info(request: HTTPConnection) -> EdgeInfo | None:
    """What the gate learnt about this request (None when it did not run: an app built without it)."""
    return scope_edge_info(request.scope)


def scope_edge_info(scope: Scope) -> EdgeInfo | None:
    found = scope.get("state", {}).get("edge")
    return found if isinstance(found, EdgeInfo) else None


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Policy,
        store: Store,
        control: Control,
        accounts: AccountService,
        trusted_proxies: TrustedProxies,
        new_account_age: float,
        networks: Networks | None = None,
        traffic: Traffic | None = None,
        known_device: Callable[[str], str | None] | None = None,
    ) -> None:
        self.app = app
        self.traffic = traffic or Traffic()
        self.probes = Probes(policy.probing) if policy.probing else None
        scoring = policy.scoring
        self.scorer = Scorer(load_rules(scoring.rules or None), scoring.paranoia, scoring.budget) if scoring else None
        self.flagged = RefusalLog(event="flagged")
        self.scoring_log = RefusalLog(event="scoring")  # budgets run out and scoring errors, without a flood
        self._trace_logged = -math.inf
        self._banning: set[asyncio.Task[None]] = set()
        self.policy = policy
        self.store = store
        self.control = control
        self.accounts = accounts
        self.trusted = trusted_proxies
        self.new_account_age = new_account_age
        self.state: Any = None
        self.refusals = RefusalLog()
        self._addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self._refused: dict[tuple[str, str], tuple[float, int, ApiError]] = {}
        self.networks = networks or Networks()
        # a device cookie's id when it is ours and has signed in to an account (the login guard reads it)
        self.known_device = known_device

    def held(self) -> dict[str, int]:
        """Entries in the gate's own bounded memories, for /metrics."""
        return {"parsed_addresses": len(self._addresses), "recent_refusals": len(self._refused),
                "scoring_answers": len(self.scorer) if self.scorer is not None else 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        klass = classify(scope["method"], scope["path"])
        text = client_address(scope, self.trusted)
        traffic = self.traffic
        traffic.arrived(text)
        remembered = self._refused.get((klass, text))
        if remembered is not None and remembered[0] > time.monotonic() and \
                remembered[1] == self.control.generation and credential(scope)[0] is None and \
                not (klass == "auth-login" and cookie_value(scope, DEVICE_COOKIE)):
            # refused a moment ago and nothing has changed since: the same answer, without deciding again
            again = remembered[2]
            traffic.refused(klass)
            self.refusals.record(again.reason, text, again.status, klass, self.control.level, "anonymous",
                                 scope["method"], scope["path"])
            await send_error(scope, send, again)
            return
        address = self._addresses.get(text)
        if address is None:
            address = self._parse(text)
        level = self.control.level
        if self.control.allow.match(address) is not None:  # allow-listed: never limited, never banned
            principal = await self._principal(scope)
            self._enter(scope, klass, text, self.tier(principal), level, principal)
            await self.app(scope, receive, _observed(send, traffic, klass))
            return
        principal, tier = None, "anonymous"
        buckets: list[Bucket] = []
        verdicts: list[Verdict] = []
        refusal = self.blocked(address)
        # admin routes take the admin token, not an account's key: it is never looked up as one
        if refusal is None and klass != "admin":
            principal, refusal = await self._principal_or_refusal(scope, address, level)
            tier = self.tier(principal)
        device = None
        if klass == "auth-login":  # sign-in attempts are told apart by the device, not by the account
            tier, device = self.sign_in_tier(scope)
        if refusal is None:
            buckets = self.buckets(klass, level, address, tier, principal, device)
            if klass == "auth-register":
                refusal = self.registration(level, buckets)
        if refusal is None:
            if buckets:
                # the memory store decides without I/O: no coroutine to build and await on the flood path
                verdicts = self.store.decide_now(buckets) or await self.store.hit(buckets)
            refusal = first_refusal(klass, buckets, verdicts)
        # established accounts are not scored: their own app's odd requests are not an attack on it
        if refusal is None and self.scorer is not None and tier != "established":
            try:
                refusal = self.scored(scope, klass, text, tier, level)
            except Exception:  # scoring is a filter, not the service: a request it cannot read goes on, but
                # as a step toward a probing ban, so that a way to break it is not a way around it
                self.traffic.event("scoring.error")
                self.scoring_log.record("scoring/error", text, None, klass, level, tier, scope["method"],
                                        scope["path"])
                subscriber = self.networks.subscriber(text)
                if self.probes is not None and self.probes.answered(subscriber, "error|" + probe_key(scope)):
                    self._start_ban(subscriber, self.probes.policy.ban)
                if time.monotonic() > self._trace_logged + 10:  # a traceback every 10 s at most: a flood of them
                    self._trace_logged = time.monotonic()       # would cost more than the requests
                    log.exception("scoring failed; the request goes on unscored")
        if refusal is not None:
            # what an address was refused is its answer for a moment, but not a device's: the owners behind a
            # carrier's NAT share the address with whoever spent its budget
            if principal is None and refusal.retry_after and credential(scope)[0] is None and \
                    tier != "known-device":
                self._remember(klass, text, refusal, _wait(buckets, verdicts, refusal))
            traffic.refused(klass)
            self.refusals.record(refusal.reason, text, refusal.status, klass, level, tier, scope["method"],
                                 scope["path"])
            await send_error(scope, send, refusal)
            return
        self._enter(scope, klass, text, tier, level, principal)
        # established accounts are not counted as scanners: their own app's 404s are not a scan
        watch = self._probe_watch(text, scope) if self.probes is not None and tier != "established" else None
        send = _observed(send, traffic, klass, watch)
        if verdicts and klass.startswith("api"):
            send = _with_ratelimit_headers(send, buckets, verdicts)
        await self.app(scope, receive, send)

    def _probe_watch(self, address: str, scope: Scope) -> Callable[[int], None]:
        probes = self.probes
        assert probes is not None
        path = scope["path"]

        def watch(status: int) -> None:
            # the subscriber (an IPv6 address's /64) is worked out only for an answer that counts: parsing
            # the address again on every request would cost the flood path a microsecond
            if probes.counts(status, path):
                subscriber = self.networks.subscriber(address)
                if probes.answered(subscriber, probe_key(scope)):
                    self._start_ban(subscriber, probes.policy.ban)

        return watch

    def scored(self, scope: Scope, klass: str, address: str, tier: str, level: str) -> ApiError | None:
        """Score the request's path, query, headers and cookies; one scoring the threshold is logged, and
        as the level's action says, counted toward the address's http-probing ban or refused."""
        policy, scorer = self.policy.scoring, self.scorer
        assert policy is not None and scorer is not None
        action = policy.actions[level]
        if action == "off":
            return None
        request = described(scope)
        found = scorer.score(request)
        if not found.complete:
            self.traffic.event("scoring.budget")
            self.scoring_log.record("scoring/budget", address, None, klass, level, tier, request.method, request.path)
        if found.score < policy.threshold:
            return None
        reason = f"probe/{found.rules[0]}"
        self.traffic.event("probe.scored")
        if action != "refuse":
            self.flagged.record(reason, address, None, klass, level, tier, request.method, request.path)
        # keyed by what matched: a scanner's payloads are many steps, while an odd cookie or header a browser
        # sends with every page (or the same odd link followed twice) is one
        subscriber = self.networks.subscriber(address)
        if action != "log" and self.probes is not None and \
                self.probes.answered(subscriber, "scored|" + found.fingerprint):
            self._start_ban(subscriber, self.probes.policy.ban)
        if action == "refuse":
            return ApiError(403, "This request looks like an attack on the service and was not accepted.",
                            "request_blocked", reason=reason)
        return None

    def _start_ban(self, subscriber: str, duration: float) -> None:
        task = asyncio.get_running_loop().create_task(self._ban_prober(subscriber, duration))
        self._banning.add(task)
        task.add_done_callback(self._banning.discard)

    async def _ban_prober(self, address: str, duration: float) -> None:
        """An address (for IPv6, its /64) that asked for too many distinct missing paths: banned (escalating),
        at once here and within a refresh on every replica."""
        try:
            ipaddress.ip_network(address)
        except ValueError:
            return  # no address to ban (a unix socket)
        try:
            ban = await self.store.ban(address, "http-probing", duration, escalate=True)
        except Exception as exc:  # the Store is away: the limits still stand
            logs.event(log, "ban_failed", logging.WARNING, address=address, reason="http-probing", error=repr(exc))
            return
        self.traffic.event("probe.banned")
        self.control.audit.record("probe-watch", "ban.add", address, reason="http-probing", until=ban.until,
                                  strikes=ban.strikes)
        logs.event(log, "banned", logging.WARNING, address=address, reason="http-probing",
                   seconds=round(ban.until - time.time()), strikes=ban.strikes)
        await self.control.refresh()

    def registration(self, level: str, buckets: list[Bucket]) -> ApiError | None:
        """Sign-ups as the registration mode says: closed refuses them all; limited adds one trickle that
        every sign-up shares, whatever its address."""
        mode = self.policy.registration_mode(level, self.control.registration)
        if mode == "closed":
            return REGISTRATION_CLOSED
        if mode == "limited":
            buckets.append(self.policy.trickle)
        return None

    def _remember(self, klass: str, address: str, refusal: ApiError, wait: float) -> None:
        """Keep an anonymous caller's refusal for as long as it would stand (at most a second, and only
        until the next Control refresh): a flooding address is then refused without deciding again."""
        if len(self._refused) >= 100_000:
            self._refused.clear()
        self._refused[(klass, address)] = (time.monotonic() + min(1.0, wait), self.control.generation, refusal)

    def _parse(self, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:  # a unix socket or a test transport: no address to limit by
            address = ipaddress.IPv4Address(0)
        # parsing costs more than the rest of a refusal: keep the addresses seen lately (a flood's too)
        if len(self._addresses) >= 100_000:
            self._addresses.clear()
        self._addresses[text] = address
        return address

    def _enter(self, scope: Scope, klass: str, address: str, tier: str, level: str,
               principal: Principal | None) -> None:
        scope.setdefault("state", {})["edge"] = EdgeInfo(klass, address, tier, level, principal)

    def blocked(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ApiError | None:
        entry = self.control.deny.match(address)
        if entry is not None:
            return ApiError(403, "Requests from your network are not accepted.", "denied", reason="deny-list")
        ban = self.control.banned(address)
        if ban is not None:
            return ApiError(403, "Your address is temporarily blocked because of abusive traffic.", "banned",
                            retry_after=ban.until - time.time(), reason=f"ban/{ban.reason}")
        return None

    def tier(self, principal: Principal | None) -> str:
        if principal is None:
            return "anonymous"
        age = time.time() - principal.created_at.timestamp()
        return "established" if age >= self.new_account_age else "new"

    async def _principal_or_refusal(self, scope: Scope, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                    level: str) -> tuple[Principal | None, ApiError | None]:
        secret, is_key = credential(scope)
        if secret is None:
            return None, None
        known, cached = self.accounts.cached_principal(secret, is_key)
        if known:
            return cached, None
        # a credential not seen lately costs a database query: the lookup rules ration them per address
        buckets = self.buckets("credential-lookup", level, address, "anonymous", None)
        if buckets and not self.accounts.lookup_pending(secret):
            refusal = first_refusal("credential-lookup", buckets, await self.store.hit(buckets))
            if refusal is not None:
                return None, refusal
        try:
            return await self.lookup(secret, is_key), None
        except ApiError as refusal:  # the database away, and this credential not seen before
            return None, refusal

    async def _principal(self, scope: Scope) -> Principal | None:
        """For allow-listed callers: no rationing (and anonymous while the database cannot be asked)."""
        secret, is_key = credential(scope)
        try:
            return await self.lookup(secret, is_key) if secret is not None else None
        except ApiError:
            return None

    async def lookup(self, secret: str, is_key: bool) -> Principal | None:
        if is_key:
            return await self.accounts.key_principal(secret)
        return await self.accounts.session_principal(secret)

    def buckets(self, klass: str, level: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 tier: str, principal: Principal | None, device: str | None = None) -> list[Bucket]:
        ip, network = self.networks.keys(address)
        caller = Caller(ip, network, tier, principal.user_id if principal else None,
                        principal.key_id if principal else None, None, device)
        return self.policy.buckets(klass, level, caller)

    def sign_in_tier(self, scope: Scope) -> tuple[str, str | None]:
        """A sign-in from a browser that has signed in here before (its signed device cookie) is
        `known-device`, with the device's own allowance: people behind one shared address (a carrier's NAT,
        an office) are not one budget. The login guard checks that the account tried is one the device
        knows; for any other, the attempt is charged as `unknown-device` (a stolen cookie buys nothing)."""
        if self.known_device is None or scope["path"] != "/auth/login":
            return "unknown-device", None
        cookie = cookie_value(scope, DEVICE_COOKIE)
        device = self.known_device(cookie) if cookie else None
        return ("known-device", device) if device else ("unknown-device", None)


def credential(scope: Scope) -> tuple[str | None, bool]:
    """The API key (Bearer) or the session cookie the request carries, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, secret = value.partition(b" ")
            if scheme.lower() == b"bearer" and secret.strip():
                return secret.strip().decode("latin-1"), True
    return cookie_value(scope, SESSION_COOKIE), False


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


def probe_key(scope: Scope) -> str:
    """What makes a request distinct to the probe watch: its path and query, as sent."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    return (raw + b"?" + query if query else raw).decode("latin-1")


def described(scope: Scope) -> Described:
    """The parts of a request that the gate scores, as they came (decoding is the scorer's)."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    return Described(scope["method"], raw.decode("latin-1").partition("?")[0],
                     scope.get("query_string", b"").decode("latin-1"),
                     tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]))


def _wait(buckets: Sequence[Bucket], verdicts: Sequence[Verdict], refusal: ApiError) -> float:
    """How long a refusal stands: until every refusing limit allows again (Retry-After is rounded up)."""
    waits = [v.retry_after for v in verdicts if not v.allowed]
    return max(waits) if waits else float(refusal.retry_after or 0)


def first_refusal(klass: str, buckets: Sequence[Bucket], verdicts: Sequence[Verdict]) -> ApiError | None:
    refused = [(v.retry_after, b.rule, b, v) for b, v in zip(buckets, verdicts, strict=True) if not v.allowed]
    if not refused:
        return None
    # the longest wait is the one that matters: retrying sooner would be refused again
    _, _, bucket, verdict = max(refused)
    return _throttled(klass, bucket, verdict)


def _throttled(klass: str, bucket: Bucket, verdict: Verdict) -> ApiError:
    # a flood meets the same few refusals over and over: build each once
    return _refusal(klass, bucket.rule, math.ceil(verdict.retry_after))


@functools.lru_cache(maxsize=4096)
def _refusal(klass: str, rule: str, wait: int) -> ApiError:
    if klass == "auth-register":
        return ApiError(429, REGISTRATION_BUSY, "registration_busy", retry_after=wait, reason=rule)
    if klass == "auth-login":
        return ApiError(429, "Too many sign-in attempts. Please wait and try again.", "login_throttled",
                        retry_after=wait, reason=rule)
    return ApiError(429, f"Rate limit reached ({rule}). Please try again in {max(1, wait)}s.",
                    "rate_limit_exceeded", type="requests", retry_after=wait, reason=rule)


def _observed(send: Send, traffic: Traffic, klass: str, watch: Callable[[int], None] | None = None) -> Send:
    """Count the answer's status class once it starts (and show refusals to the probe watch)."""
    async def observe(message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            traffic.answered(klass, status)
            if watch is not None and status >= 400:
                watch(status)
        await send(message)

    return observe


def _with_ratelimit_headers(send: Send, buckets: Sequence[Bucket], verdicts: Sequence[Verdict]) -> Send:
    # the tightest limit is the one the client must pace itself by
    index = min(range(len(verdicts)), key=lambda i: verdicts[i].remaining)
    bucket, verdict = buckets[index], verdicts[index]
    return with_headers(send, ratelimit("requests", round(bucket.tolerance / bucket.interval), verdict.remaining,
                                        verdict.reset_after))
