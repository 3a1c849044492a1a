"""The gate: plain ASGI before routing. For each request, in a fixed order, like rack-attack:
allow list → deny list → bans → who is calling → limits for (class, level, tier) → the app.

No database on the way: the principal comes from the account service's caches, the level, bans and lists
from the Control snapshot, the limits from the Store (memory: no I/O; Redis: one round trip).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from floodwall import cookies, logs
from floodwall.edge.control import Control
from floodwall.edge.credentials import DEVICE_COOKIE, cookie_value, credential
from floodwall.edge.fetch_metadata import CROSS_SITE, cross_site
from floodwall.edge.policy import Policy, classify
from floodwall.errors import ApiError, send_error
from floodwall.headers import ratelimit
from floodwall.identity import Networks, TrustedProxies, client_address
from floodwall.inspection import Described, ProbeWatch, RequestScoring, Score
from floodwall.limits import Bucket, Caller, Verdict, first_refusal
from floodwall.principal import Principal, Principals
from floodwall.state.store import Held, Store, held_buckets
from floodwall.telemetry.traffic import Traffic

log = logging.getLogger("floodwall.edge")

REGISTRATION_CLOSED_MESSAGE = ("Registration is closed for now because of an ongoing attack or very high demand. "
                               "Please try again later. Registered users can log in normally.")
# bans the probe watch gives (scanning from an address), as against an operator's
BEHAVIOURAL_BANS = frozenset({"ban/http-probing"})
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
    strikes: list[tuple[Bucket, Verdict]] = dataclasses.field(default_factory=list)
    # a model call's strike held in the same round trip, for its prompt until it is scored (prompt screening
    # takes it; the gate gives back what nobody took once the call is over)
    held: Held | None = None


def edge_info(request: HTTPConnection) -> EdgeInfo | None:
    """What the gate learnt about this request (None when it did not run: an app built without it)."""
    return scope_edge_info(request.scope)


def scope_edge_info(scope: Scope) -> EdgeInfo | None:
    found = scope.get("state", {}).get("edge")
    return found if isinstance(found, EdgeInfo) else None


@dataclasses.dataclass(slots=True)
class Decision:
    """What the gate decides for one request, and the facts it rests on: the same for the request it lets
    in or refuses and for /admin/api/explain's answer about it."""

    decision: str  # pass | flag | challenge | queue | refuse
    klass: str
    address: str
    level: str
    tier: str = "anonymous"
    principal: Principal | None = None
    refusal: ApiError | None = None
    reason: str = ""
    buckets: Sequence[Bucket] = ()
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)
    # for a model call: the account's prompt-strike limits, looked at in the same round trip (prompt screening
    # reads them instead of asking the Store again)
    strikes: list[tuple[Bucket, Verdict]] = dataclasses.field(default_factory=list)
    held: Held | None = None  # a strike held for the call's prompt (Held), where the account had one to hold
    score: Score | None = None
    remembered: bool = False  # the answer given a moment ago to this address, not decided again
    allow_listed: bool = False


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Policy,
        store: Store,
        control: Control,
        principals: Principals,
        trusted_proxies: TrustedProxies,
        new_account_age: float,
        networks: Networks | None = None,
        traffic: Traffic | None = None,
        known_device: Callable[[str], str | None] | None = None,
        scoring: RequestScoring | None = None,
        probes: ProbeWatch | None = None,
        session_cookie: str = cookies.SESSION,
    ) -> None:
        self.app = app
        self.session_cookie = cookies.prefix(session_cookie)
        self.traffic = traffic or Traffic()
        self.probes = probes
        self.scoring = scoring
        self.flagged = logs.RefusalLog(log, event="flagged")
        self.scoring_log = logs.RefusalLog(log, event="scoring")  # budgets run out and scoring errors, without a flood
        self._trace_logged = -math.inf
        self._banning: set[asyncio.Task[None]] = set()
        self.policy = policy
        self.store = store
        self.control = control
        self.principals = principals
        self.trusted = trusted_proxies
        self.new_account_age = new_account_age
        self.state: Any = None
        self.refusals = logs.RefusalLog(log)
        self._addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self._refused: dict[tuple[str, str], tuple[float, int, ApiError]] = {}
        self.networks = networks or Networks()
        # a device cookie's id when it is ours and has signed in to an account (the login guard reads it)
        self.known_device = known_device

    def held(self) -> dict[str, int]:
        """Entries in the gate's own bounded memories, for /metrics."""
        return {"parsed_addresses": len(self._addresses), "recent_refusals": len(self._refused),
                "scoring_answers": len(self.scoring) if self.scoring is not None else 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        klass = classify(scope["method"], scope["path"])
        text = client_address(scope, self.trusted)
        traffic = self.traffic
        traffic.arrived(text)
        found = await self.decide(scope, klass, text)
        refusal = found.refusal
        if refusal is not None:
            # what an address was refused is its answer for a moment, but not a device's: the owners behind a
            # carrier's NAT share the address with whoever spent its budget
            if not found.remembered and found.principal is None and refusal.retry_after and \
                    credential(scope, self.session_cookie)[0] is None and found.tier != "known-device":
                self._remember(klass, text, refusal, _wait(found.verdicts, refusal))
            traffic.refused(klass)
            self.refusals.record(refusal.reason, text, refusal.status, klass, found.level, found.tier,
                                 scope["method"], scope["path"])
            await send_error(scope, send, refusal)
            return
        held = found.held
        scope.setdefault("state", {})["edge"] = EdgeInfo(klass, text, found.tier, found.level, found.principal,
                                                          found.strikes, held)
        if found.allow_listed:  # never limited, never banned
            await self.app(scope, receive, _observed(send, traffic, klass))
            return
        # established accounts are not counted as scanners: their own app's 404s are not a scan
        watch = self._probe_watch(text, scope) if self.probes is not None and found.tier != "established" else None
        headers = _ratelimit_headers(found.buckets, found.verdicts) if found.verdicts and klass.startswith("api") \
            else None
        if held is None:
            await self.app(scope, receive, _observed(send, traffic, klass, watch, headers))
            return
        try:
            await self.app(scope, receive, _observed(send, traffic, klass, watch, headers))
        finally:
            held.release()  # (nothing, where screening took it: a prompt aside holds it until scored)

    async def decide(self, scope: Scope, klass: str, text: str, spend: bool = True) -> Decision:
        """The gate's decision for a request, in its fixed order: a refusal remembered a moment ago, the
        allow list, the deny list and bans, who is calling (rationing lookups of credentials not seen lately),
        the limits for (class, level, tier) with the registration mode, then scoring. Spending (the gate) hits
        the limits, counts, logs and bans; peeking (explain) only looks, and answers the same."""
        level = self.control.level
        if cross_site(scope, klass):  # before anything is looked at or counted: never a step toward a ban
            return Decision("refuse", klass, text, level, refusal=CROSS_SITE, reason=CROSS_SITE.reason or "")
        remembered = self._refused.get((klass, text))
        if remembered is not None and remembered[0] > time.monotonic() and \
                remembered[1] == self.control.generation and \
                credential(scope, self.session_cookie)[0] is None and \
                not (klass == "auth-login" and cookie_value(scope, DEVICE_COOKIE)):
            # refused a moment ago and nothing has changed since: the same answer, without deciding again
            again = remembered[2]
            return Decision("refuse", klass, text, level, refusal=again, reason=again.reason, remembered=True)
        address = self._addresses.get(text)
        if address is None:
            address = self._parse(text)
        if self.control.allow.match(address) is not None:
            principal = await self._principal(scope)
            return Decision("pass", klass, text, level, self.tier(principal), principal, reason="allow-list",
                            allow_listed=True)
        found = Decision("pass", klass, text, level)
        refusal = self.blocked(address)
        # a behavioural ban (earned by what came from the address) never refuses an established account's
        # own session or key: the people behind a NAT with a scanner, or visitors of a hostile page, keep
        # their service; an operator's ban and the deny list hold for everyone
        forgivable = refusal is not None and refusal.reason in BEHAVIOURAL_BANS and \
            credential(scope, self.session_cookie)[0] is not None
        # admin routes take the admin token, not an account's key: it is never looked up as one
        if (refusal is None or forgivable) and klass != "admin":
            found.principal, looked_up = self._known_principal(scope) or \
                await self._principal_or_refusal(scope, address, level, spend)
            found.tier = self.tier(found.principal)
            if refusal is None:
                refusal = looked_up
            elif found.tier == "established" and looked_up is None:
                refusal = None
        device = None
        if klass == "auth-login":  # sign-in attempts are told apart by the device, not by the account
            found.tier, device = self.sign_in_tier(scope)
        if refusal is None:
            found.buckets = self.buckets(klass, level, address, found.tier, found.principal, device)
            if klass == "auth-register":
                refusal = self.registration(found, scope["path"])
        if refusal is None:
            strikes = self.strike_buckets(found) if klass == "api-inference" else []
            hold = held_buckets(strikes) if spend else []
            if found.buckets or strikes:
                # the memory store decides without I/O: no coroutine to build and await on the flood path
                verdicts = (self.store.decide_now(found.buckets, strikes, hold) if spend else None) or \
                    await self._limits(found.buckets, strikes, hold, spend)
                spent, looked = len(found.buckets), len(found.buckets) + len(strikes)
                found.verdicts = verdicts[:spent]
                found.strikes = list(zip(strikes, verdicts[spent:looked], strict=True))
                if hold and all(verdict.allowed for verdict in verdicts[:spent]) and \
                        all(verdict.allowed for verdict in verdicts[looked:]):
                    found.held = Held(self.store, hold)
            refusal = first_refusal(klass, found.buckets, found.verdicts)
        # established accounts are not scored: their own app's odd requests are not an attack on it
        if refusal is None and self.scoring is not None and found.tier != "established":
            refusal = self._scored_or_error(scope, found, spend)
        if refusal is not None:
            found.decision, found.refusal, found.reason = "refuse", refusal, refusal.reason or refusal.code
            if found.held is not None:
                found.held.release()
                found.held = None
        return found

    async def _limits(self, buckets: Sequence[Bucket], strikes: Sequence[Bucket], hold: Sequence[Bucket],
                      spend: bool) -> list[Verdict]:
        """Where the store could not decide now (decide_now): hit the limits, or only look (explain)."""
        return await (self.store.hit(buckets, strikes, hold) if spend else self.store.peek([*buckets, *strikes]))

    def strike_buckets(self, found: Decision) -> Sequence[Bucket]:
        """A model call's prompt-strike limits (an account's flagged prompts), looked at with its limits."""
        principal = found.principal
        if principal is None:
            return ()
        caller = Caller(0, 0, found.tier, principal.user_id, principal.key_id)
        return self.policy.buckets("prompt-strike", found.level, caller)

    def _scored_or_error(self, scope: Scope, found: Decision, spend: bool) -> ApiError | None:
        try:
            return self.scored(scope, found, spend)
        except Exception:  # scoring is a filter, not the service: a request it cannot read goes on, but
            # as a step toward a probing ban, so that a way to break it is not a way around it
            found.reason = "scoring/error"
            if not spend:
                return None
            text, klass = found.address, found.klass
            self.traffic.event("scoring.error")
            self.scoring_log.record("scoring/error", text, None, klass, found.level, found.tier, scope["method"],
                                    scope["path"])
            subscriber = self.networks.subscriber(text)
            if self.probes is not None and self.probes.answered(subscriber, "error|" + probe_key(scope)):
                self._start_ban(subscriber, self.probes.ban)
            if time.monotonic() > self._trace_logged + 10:  # a traceback every 10 s at most: a flood of them
                self._trace_logged = time.monotonic()       # would cost more than the requests
                log.exception("scoring failed; the request goes on unscored")
            return None

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
                    self._start_ban(subscriber, probes.ban)

        return watch

    def scored(self, scope: Scope, found: Decision, spend: bool = True) -> ApiError | None:
        """Score the request's path, query, headers and cookies; one scoring the threshold is logged, and
        as the level's action says, counted toward the address's http-probing ban or refused."""
        scoring = self.scoring
        assert scoring is not None
        action = scoring.action(found.level)
        if action == "off":
            return None
        request = described(scope)
        found.score = score = scoring.score(request)
        address, klass, level, tier = found.address, found.klass, found.level, found.tier
        if not score.complete and spend:
            self.traffic.event("scoring.budget")
            self.scoring_log.record("scoring/budget", address, None, klass, level, tier, request.method, request.path)
        if score.score < scoring.threshold:
            return None
        reason = f"probe/{score.rules[0]}"
        if action == "flag":
            found.decision, found.reason = "flag", reason
        if not spend:
            return _blocked(reason) if action == "refuse" else None
        self.traffic.event("probe.scored")
        if action != "refuse":
            self.flagged.record(reason, address, None, klass, level, tier, request.method, request.path)
        # keyed by what matched: a scanner's payloads are many steps, while an odd cookie or header a browser
        # sends with every page (or the same odd link followed twice) is one
        subscriber = self.networks.subscriber(address)
        probes = self.probes
        if action != "log" and probes is not None and probes.answered(subscriber, "scored|" + score.fingerprint):
            self._start_ban(subscriber, probes.ban)
        return _blocked(reason) if action == "refuse" else None
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

    def registration(self, found: Decision, path: str) -> ApiError | None:
        """Sign-ups as the registration mode says: closed refuses them all; limited adds one trickle that
        every sign-up shares, whatever its address; queued sends a sign-up through the waiting room, and a
        level with a challenge difficulty asks it for proof of work (the sign-up route does both)."""
        mode = self.policy.registration_mode(found.level, self.control.registration)
        if mode == "closed":
            return REGISTRATION_CLOSED
        if mode == "limited":
            found.buckets = [*found.buckets, self.policy.trickle]  # (an account's list is the policy's: kept)
        if mode == "queued":
            found.decision, found.reason = "queue", "registration/queued"
        elif path == "/auth/register" and self.policy.challenge[found.level]:
            found.decision, found.reason = "challenge", "registration/challenge"
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

    def _known_principal(self, scope: Scope) -> tuple[Principal | None, None] | None:
        """_principal_or_refusal's answer where no lookup is needed (no credential, or one the cache knows),
        without a coroutine; None where one is."""
        secret, is_key = credential(scope, self.session_cookie)
        if secret is None:
            return None, None
        known, cached = self.principals.cached_principal(secret, is_key)
        return (cached, None) if known else None

    async def _principal_or_refusal(self, scope: Scope, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                    level: str, spend: bool = True) -> tuple[Principal | None, ApiError | None]:
        secret, is_key = credential(scope, self.session_cookie)
        if secret is None:
            return None, None
        known, cached = self.principals.cached_principal(secret, is_key)
        if known:
            return cached, None
        # a credential not seen lately costs a database query: the lookup rules ration them per address
        buckets = self.buckets("credential-lookup", level, address, "anonymous", None)
        if buckets and not self.principals.lookup_pending(secret):
            verdicts = await (self.store.hit(buckets) if spend else self.store.peek(buckets))
            refusal = first_refusal("credential-lookup", buckets, verdicts)
            if refusal is not None:
                return None, refusal
        try:
            if not spend:  # peeking: the answer, without filling the cache the gate's next look would use
                return await self.principals.uncached_principal(secret, is_key), None
            return await self.lookup(secret, is_key), None
        except ApiError as refusal:  # the database away, and this credential not seen before
            return None, refusal

    async def _principal(self, scope: Scope) -> Principal | None:
        """For allow-listed callers: no rationing (and anonymous while the database cannot be asked)."""
        secret, is_key = credential(scope, self.session_cookie)
        try:
            return await self.lookup(secret, is_key) if secret is not None else None
        except ApiError:
            return None

    async def lookup(self, secret: str, is_key: bool) -> Principal | None:
        if is_key:
            return await self.principals.key_principal(secret)
        return await self.principals.session_principal(secret)

    def buckets(self, klass: str, level: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 tier: str, principal: Principal | None, device: str | None = None) -> Sequence[Bucket]:
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


def _wait(verdicts: Sequence[Verdict], refusal: ApiError) -> float:
    """How long a refusal stands: until every refusing limit allows again (Retry-After is rounded up)."""
    waits = [v.retry_after for v in verdicts if not v.allowed]
    return max(waits) if waits else float(refusal.retry_after or 0)


def _observed(send: Send, traffic: Traffic, klass: str, watch: Callable[[int], None] | None = None,
              headers: list[tuple[bytes, bytes]] | None = None) -> Send:
    """Count the answer's status class once it starts (and show refusals to the probe watch), adding
    `headers` to it. One wrapper of the send, not one for each: each costs every message of the answer."""
    async def observe(message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            traffic.answered(klass, status)
            if watch is not None and status >= 400:
                watch(status)
            if headers:
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return observe


def _ratelimit_headers(buckets: Sequence[Bucket], verdicts: Sequence[Verdict]) -> list[tuple[bytes, bytes]]:
    # the tightest limit is the one the client must pace itself by (the first of the tightest)
    bucket, verdict = buckets[0], verdicts[0]
    for other, found in zip(buckets, verdicts, strict=True):
        if found.remaining < verdict.remaining:
            bucket, verdict = other, found
    return ratelimit("requests", round(bucket.tolerance / bucket.interval), verdict.remaining, verdict.reset_after)


def _blocked(reason: str) -> ApiError:
    return ApiError(403, "This request looks like an attack on the service and was not accepted.", "request_blocked",
                    reason=reason)
