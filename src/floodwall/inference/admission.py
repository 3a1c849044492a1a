"""Priority access to the model: what a call may cost, and when it may go to the model server.

Before the call: a cost estimate (prompt tokens + max_tokens) against per-account and per-key token
budgets (GCRA in the Store, reconciled with the real usage afterwards), and an in-flight cap per account.
Then a concurrency limit learnt from the model server's latency (gradient, after Netflix's Gradient2) and
its 503s, with a bounded priority queue: established accounts first, then new ones, then the rest. A lower
tier is sure of its share of the limit (and, where the level lets it, takes the slots nobody else waits for),
is shed first when the queue is full, and waits less.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import operator
import secrets
import time
from collections.abc import Callable
from typing import Any

from floodwall.background import cancel
from floodwall.errors import ApiError
from floodwall.headers import ratelimit
from floodwall.inference.capacity import FiguresLimit, GradientLimit, IdleBudget, LoopLag, Peak
from floodwall.inference.fields import choices, hold_length
from floodwall.inference.model_metrics import Reading
from floodwall.inference.replicas import Others
from floodwall.inference.terms import LOWER_TIERS, TIER_ORDER, AdmissionPolicy, LevelTerms, cost
from floodwall.limits import Bucket
from floodwall.principal import Principal
from floodwall.state.store import Store
from floodwall.telemetry.traffic import Traffic

log = logging.getLogger("floodwall.inference")
_REMAINING = operator.attrgetter("remaining")


@dataclasses.dataclass(eq=False)
class Ticket:
    tier: str
    account: int
    key: int | None
    buckets: list[Bucket]
    estimate: int
    max_tokens_cap: int | None
    headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    started: float = 0.0
    generating: bool = False  # its first token has come: the model server is serving it
    released: bool = False
    _future: asyncio.Future[None] | None = None


class Admission:
    # replicas publish their figures this often, and one not heard from for `SHARE_TTL` has stopped
    SHARE_EVERY, SHARE_TTL = 0.25, 2.0

    def __init__(self, policy: AdmissionPolicy, store: Store, level: Callable[[], str],
                 traffic: Traffic | None = None, figures: Callable[[], Reading | None] | None = None,
                 board: str | None = "admission") -> None:
        self.policy = policy
        self.traffic = traffic or Traffic()
        self.store = store
        self.level = level
        self.loop_lag = LoopLag()
        self.limiter = GradientLimit(policy.initial_limit, policy.min_limit, policy.max_limit,
                                     slack=policy.latency_slack)
        # the model server's own figures, when it publishes them (model_metrics.py): the fresh reading
        self.figures = figures or (lambda: None)
        self.by_figures = FiguresLimit(policy.initial_limit, policy.min_limit, policy.max_limit)
        # how many calls established accounts have wanted at once lately (their slots are kept for them)
        self.first_demand = Peak(policy.reserve_half_life)
        self.reserve_budget = IdleBudget(policy.reserve_idle)
        self._retry: asyncio.TimerHandle | None = None
        self.in_flight = 0
        self.by_tier: collections.Counter[str] = collections.Counter()
        self.by_account: collections.Counter[int] = collections.Counter()
        self.waiting_by_account: collections.Counter[int] = collections.Counter()  # its calls in the queues
        self.queues: dict[str, collections.deque[Ticket]] = {tier: collections.deque() for tier in TIER_ORDER}
        self.shed: collections.Counter[str] = collections.Counter()
        self.admitted: collections.Counter[str] = collections.Counter()
        # the other replicas that share the model server, through the Store's board `board` (None: this
        # replica's model server is its own); none with a store of one process
        self.board = board
        self.others = Others()
        self.owner = secrets.token_hex(8)
        self._published = 0  # calls in flight when this replica last told the others
        self._sharing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failed_at = 0.0

    def start(self) -> None:
        self.loop_lag.start()
        if self.board is not None:
            self._sharing = asyncio.get_running_loop().create_task(self._share(), name="admission-share")

    async def stop(self) -> None:
        # the round under way ends first: a Redis call cancelled halfway can leave its connection unusable
        self._stopping.set()
        if self._sharing is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self._sharing)
        await cancel(self._sharing)
        if self.board is not None and self._sharing is not None:
            with contextlib.suppress(Exception):  # best effort: else the others drop it after the ttl
                async with asyncio.timeout(1.0):
                    await self.store.unshare(self.board, self.owner)
        await self.loop_lag.stop()

    async def _share(self) -> None:
        """Tell the other replicas what this one admits, and learn what they do; waiting calls may then go.
        A board that cannot be read leaves the others as they were last read (a replica that read nothing
        would take the whole limit on top of theirs), and nothing here stops the loop."""
        assert self.board is not None
        while not self._stopping.is_set():
            try:
                first = TIER_ORDER[0]
                mine = {"in_flight": self.in_flight, "established": self.by_tier[first],
                        "established_waiting": len(self.queues[first]), "demand": self.in_flight + self.queued}
                boards = await self.store.share(self.board, self.owner, mine, self.SHARE_TTL)
                if boards is not None:
                    self.others, self._published = Others.summed(boards), mine["in_flight"]
                self._dispatch()
            except Exception:
                if time.monotonic() - self._failed_at > 60:  # a traceback a minute at most
                    self._failed_at = time.monotonic()
                    log.exception("admission's board round failed; the next one is in %.2f s", self.SHARE_EVERY)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.SHARE_EVERY):
                    await self._stopping.wait()

    @property
    def total_in_flight(self) -> int:
        """Calls out at the model server from every replica (this one's own count, the others' last figures)."""
        return self.in_flight + self.others.in_flight

    def own_limit(self, limit: int) -> int:
        """This replica's part of the limit (replicas.Others.part); the whole of it where it is the only one."""
        if not self.others.replicas:
            return limit
        first = TIER_ORDER[0]
        return self.others.part(limit, self._published, self.in_flight, self.queued,
                                self.by_tier[first] + len(self.queues[first]))

    @property
    def queued(self) -> int:
        return sum(map(len, self.queues.values()))  # (no generator: a frame for each tier, on every call)

    @property
    def source(self) -> str:
        """What the limit is taken from now: the model server's figures, or its latency."""
        return "figures" if self.figures() is not None else "latency"

    @property
    def limit(self) -> int:
        return self.by_figures.value if self.figures() is not None else self.limiter.limit

    def observe(self, reading: Reading) -> None:
        """A new reading of the model server's figures: the limit follows, and waiting calls may go."""
        limit = self.limit
        # pressed: calls wait that one more slot would let start (not a reserve that grows with the limit)
        pressed = self.queued > 0 and self.total_in_flight + self._reserve(limit + 1) < limit + 1 and \
            self.total_in_flight + self._reserve(limit) >= limit
        self.by_figures.observe(reading, self.total_in_flight, pressed)
        self._dispatch()

    def stats(self) -> dict[str, Any]:
        reading = self.figures()
        return {"limit": self.limit, "source": self.source, "latency_limit": self.limiter.limit,
                "latency_floor": round(self.limiter.floor, 2),
                "latency_ms": {kind: {"recent": round(recent * 1000, 2),
                                      "baseline": round(self.limiter.baseline[kind] * 1000, 2)}
                               for kind, recent in self.limiter.recent.items()},
                "server": None if reading is None else {"running": reading.running, "waiting": reading.waiting,
                                                        "cache": reading.cache, "capacity": self.by_figures.capacity},
                "loop_lag_ms": round(self.loop_lag.lag * 1000, 2),
                "reserve": {"peak": round(self.first_demand.value, 2),  # most: None until measured (the whole peak)
                            "most": self.reserve_budget.slots if math.isfinite(self.reserve_budget.most) else None},
                # slots lower tiers may take beyond their shares (spare "idle"), as _may_start bounds them
                "lent": min(self.reserve_budget.lent, self._lendable(self.policy.terms(self.level()), self.limit)),
                "replicas": 1 + self.others.replicas, "others_in_flight": self.others.in_flight,
                "in_flight": self.in_flight, "by_tier": dict(self.by_tier),
                "queued": {t: len(q) for t, q in self.queues.items()}, "shed": dict(self.shed),
                "admitted": dict(self.admitted)}

    def gauges(self) -> dict[str, float]:
        """The model's saturation for the detector: calls in flight against the learnt limit, calls waiting."""
        limit = self.limit
        # every replica's calls: the model server is theirs together
        in_flight = self.total_in_flight
        return {"model_in_flight": float(in_flight), "model_limit": float(limit),
                "model_saturation": in_flight / limit if limit else 0.0, "model_queued": float(self.queued)}

    async def admit(self, principal: Principal, tier: str, level: str, body: dict[str, Any]) -> Ticket:
        """Wait for the call's turn, or raise the refusal. Caps the completions' length when the level says so."""
        terms = self.policy.terms(level)
        most = terms.max_choices.get(tier)
        count, field = choices(body)
        if most is not None and count > most:
            raise ApiError(400, f"Right now, {tier} accounts may ask for at most {most} completion"
                           f"{'s' if most > 1 else ''} a call ({field}).", "too_many_choices", param=field,
                           reason="admission/choices")
        cap = terms.max_tokens.get(tier)
        length = 0
        if "input" not in body:  # a generation: its length is bounded, whichever field the model server reads
            # (what estimate_cost would read from the fields once held: the longest is the held length)
            length = hold_length(body, self.policy.default_max_tokens, cap)
        prompt, completion = cost(body, length, count)
        estimate = prompt + completion
        budget = terms.tokens_per_minute.get(tier)
        if budget is not None and estimate > budget:
            # no wait would let it through: say so, rather than a Retry-After of hours
            raise ApiError(400, f"This call may use up to {estimate} tokens, more than the {budget} a minute this "
                           "account may use: ask for fewer max_tokens or completions, or send a shorter prompt.",
                           "tokens_exceed_budget", type="tokens", reason="tokens/too-large")
        buckets = self._token_buckets(principal, tier, terms, estimate)
        headers: list[tuple[bytes, bytes]] = []
        if buckets:
            # the memory store decides without I/O: no coroutine to build and await (as the gate)
            verdicts = self.store.decide_now(buckets) or await self.store.hit(buckets)
            for bucket, verdict in zip(buckets, verdicts, strict=True):
                if not verdict.allowed:
                    raise ApiError(
                        429, f"Token budget reached ({bucket.rule}): this call may use up to {estimate} tokens. "
                        f"Please retry in {max(1, round(verdict.retry_after))}s or ask for fewer max_tokens.",
                        "rate_limit_exceeded", type="tokens", retry_after=verdict.retry_after, reason=bucket.rule)
            # OpenAI's token headers, for the tighter of the account's and the key's budgets
            tightest = min(verdicts, key=_REMAINING)
            headers = ratelimit("tokens", terms.tokens_per_minute[tier], tightest.remaining, tightest.reset_after)
        cap_in_flight = terms.in_flight.get(tier)
        # its calls waiting count too: they all start as soon as slots free
        if cap_in_flight is not None and \
                self.by_account.get(principal.user_id, 0) + self.waiting_by_account.get(principal.user_id, 0) >= \
                cap_in_flight:
            await self._refund(buckets)
            raise ApiError(429, f"Too many calls at once on this account (at most {cap_in_flight}).",
                           "too_many_concurrent_requests", retry_after=1, reason="in-flight/account")
        ticket = Ticket(tier, principal.user_id, principal.key_id, buckets, estimate, cap, headers)
        if self._starts_now(ticket, terms):
            return ticket  # no coroutine to build and await for a call that does not wait
        try:
            await self._wait_turn(ticket, terms)
        except BaseException:
            await self._refund(buckets)
            raise
        return ticket

    def _token_buckets(self, principal: Principal, tier: str, terms: LevelTerms, estimate: int) -> list[Bucket]:
        per_minute = terms.tokens_per_minute.get(tier)
        if not per_minute:
            return []
        interval = 60.0 / per_minute
        buckets = [Bucket("tokens/account", principal.user_id, interval, 60.0, estimate)]
        if principal.key_id is not None:
            buckets.append(Bucket("tokens/key", principal.key_id, interval, 60.0, estimate))
        return buckets

    async def _refund(self, buckets: list[Bucket]) -> None:
        if buckets:
            self.store.charge_later([b.refund() for b in buckets])

    def _may_start(self, tier: str, terms: LevelTerms, spare: bool = False) -> bool:
        """Whether a call of `tier` may start now: within its share, or (`spare`) beyond it."""
        limit = self.limit
        if self.in_flight >= self.own_limit(limit):
            return False
        if tier == TIER_ORDER[0]:
            return True
        if self.others.established_waiting:
            return False  # another replica's established calls wait: they go first, there as here
        # a call cannot be taken back once started: a lower tier takes a free slot only if the slots left
        # still hold the established calls of the recent peak, and only its share of the limit
        if self.total_in_flight + self._reserve(limit) >= limit:
            return False
        if self._room(tier, terms, limit) > 0:
            return True
        # beyond its share: only where no other replica has calls waiting (the board does not say of which
        # tier, or whether within their shares: they may be owed these slots), and as many as are lent
        if not spare or self.others.demand > self.others.in_flight:
            return False
        return terms.spare == "all" or self._lent(terms, limit) < min(self.reserve_budget.lent,
                                                                      self._lendable(terms, limit))

    def _lent(self, terms: LevelTerms, limit: int) -> int:
        """The lower tiers' calls running beyond their shares."""
        return sum(int(max(0.0, -self._room(tier, terms, limit))) for tier in LOWER_TIERS)

    def _room(self, tier: str, terms: LevelTerms, limit: int) -> float:
        """Calls the tier may still start within its share of the limit (at least one call's share)."""
        share = terms.share.get(tier, 1.0)
        return max(1, math.floor(share * limit)) - self.by_tier[tier] if share < 1.0 else math.inf

    def _starts_now(self, ticket: Ticket, terms: LevelTerms) -> bool:
        # beyond its share only while nobody waits: a lower tier's call waiting within its own share goes first
        if not self._ahead(ticket.tier, terms) and \
                self._may_start(ticket.tier, terms, terms.spare != "none" and not self.queued):
            self._start(ticket)
            return True
        return False

    async def _wait_turn(self, ticket: Ticket, terms: LevelTerms) -> None:
        """Wait in the tier's queue for the call's turn (it could not start now), or raise the refusal."""
        if self.queued >= self.policy.queue_size and not self._shed_lower(ticket.tier):
            self._count_shed(ticket.tier)
            raise _busy(ticket.tier)
        ticket._future = asyncio.get_running_loop().create_future()
        self.queues[ticket.tier].append(ticket)
        self.waiting_by_account[ticket.account] += 1
        self._note_idle()  # (an established call waiting is noted too: lending may be what it waits for)
        if ticket.tier != TIER_ORDER[0]:
            self._look_again()
        try:
            # (asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that lands as the turn comes)
            async with asyncio.timeout(self.policy.max_wait[ticket.tier]):
                await asyncio.shield(ticket._future)
        except TimeoutError:
            if ticket.started:
                return  # its turn came just as the wait ran out
            self._leave(ticket)
            self._count_shed(ticket.tier)
            raise _busy(ticket.tier) from None
        except asyncio.CancelledError:
            # the client went away while waiting: its place goes to the next in line
            if not self._leave(ticket) and ticket.started:
                self.release(ticket)
            raise

    def _ahead(self, tier: str, terms: LevelTerms) -> bool:
        """Calls wait that go before one of `tier`: established ones, its own tier's, and those of the tiers
        between that wait for slots (a tier waiting only for room within its share holds back none below)."""
        for other in TIER_ORDER[: TIER_ORDER.index(tier) + 1]:
            if self.queues[other] and (other in (tier, TIER_ORDER[0]) or self._room(other, terms, self.limit) > 0):
                return True
        return False

    def _leave(self, ticket: Ticket) -> bool:
        """Take a waiting ticket out of its queue; False if it had already been started."""
        try:
            self.queues[ticket.tier].remove(ticket)
        except ValueError:
            return False
        self._dequeued(ticket)
        self._note_idle()
        return True

    def _dequeued(self, ticket: Ticket) -> None:
        waiting = self.waiting_by_account
        waiting[ticket.account] -= 1
        if waiting[ticket.account] <= 0:
            del waiting[ticket.account]

    def _shed_lower(self, tier: str) -> bool:
        """Make room by turning away the newest waiter of the lowest tier below `tier`."""
        for lower in reversed(TIER_ORDER[TIER_ORDER.index(tier) + 1:]):
            if self.queues[lower]:
                victim = self.queues[lower].pop()
                self._dequeued(victim)
                self._count_shed(lower)
                if victim._future is not None and not victim._future.done():
                    victim._future.set_exception(_busy(lower))
                return True
        return False

    def _count_shed(self, tier: str) -> None:
        self.shed[tier] += 1
        self.traffic.event(f"model.shed.{tier}")

    def _start(self, ticket: Ticket) -> None:
        if ticket.tier == TIER_ORDER[0]:
            others = self.others
            self.first_demand.note(self.by_tier[ticket.tier] + 1 + len(self.queues[ticket.tier]) + others.established
                                   + others.established_waiting)
        ticket.started = time.monotonic()
        self.in_flight += 1
        self.by_tier[ticket.tier] += 1
        self.by_account[ticket.account] += 1
        self.admitted[ticket.tier] += 1
        self._note_idle()

    def _note_idle(self) -> None:
        """What the reserve leaves idle (and the shares, where the level lends) is measured on every change of
        the slots and queues."""
        limit = self.limit
        lower_waiting = any(map(self.queues.__getitem__, LOWER_TIERS))
        established_waiting = bool(self.queues[TIER_ORDER[0]])
        # (the level's terms only where something waits: not on a calm call's path)
        terms = self.policy.terms(self.level()) if lower_waiting or established_waiting else None
        # an established call waiting while slots are lent: the lending may be what it waits for
        lent_waited = terms is not None and established_waiting and terms.spare == "idle" and \
            self._lent(terms, limit) > 0
        if terms is None or not lower_waiting:  # nobody below waits: nothing is idle for them
            self.reserve_budget.note(0, limit, False, 0, -1, lent_waited)
            return
        usable = 0  # the waiting lower-tier calls that could start, their shares allowing, if the slots were free
        beyond = 0  # ...and those their shares hold back
        for tier in LOWER_TIERS:
            waiting = len(self.queues[tier])
            within = waiting if terms.spare == "all" else int(min(waiting, max(0, self._room(tier, terms, limit))))
            usable += within
            beyond += waiting - within
        free, reserve = limit - self.total_in_flight, self._reserve(limit)
        beyond_reserve = max(0, free - reserve)  # free slots the reserve does not hold
        unlent, lendable = -1, None
        could = usable  # the waiting calls the slots the reserve keeps idle could serve
        if beyond and terms.spare == "idle":
            lendable = self._lendable(terms, limit)
            lent = self._lent(terms, limit)
            # what only the lending's bound keeps idle: the slots free beyond the reserve, as far as the calls
            # beyond their shares could use them; none where something else holds them back (the other
            # replicas' waiting calls, this replica's part of the limit, a lending already at its bound)
            held_else = self.others.demand > self.others.in_flight or self.in_flight >= self.own_limit(limit) or \
                lent >= lendable
            unlent = 0 if held_else else min(beyond_reserve, beyond)
            # ...and where the level lends, the reserve's own slots idle for those calls too, as far as the lending
            # could take them and the free slots beyond the reserve (the lending's measure, above) do not hold
            # them: else a slot it keeps while the lower tiers are at their shares is in neither measure
            could += 0 if held_else else max(0, min(beyond, lendable - lent) - beyond_reserve)
        self.reserve_budget.note(min(free, could), limit, could > 0, reserve, unlent, lent_waited, lendable)

    def _lendable(self, terms: LevelTerms, limit: int) -> int:
        """The most slots lent beyond the shares: half of what the lower tiers' shares leave the established
        tier alone, so that lending never takes away more than half of what it is sure of with spare "none"."""
        shares = sum(max(1, math.floor(share * limit)) for tier in LOWER_TIERS
                     if (share := terms.share.get(tier, 1.0)) < 1.0)  # (a share of 1.0 is no cap: nothing to lend)
        return max(0, limit - shares) // 2

    def _reserve(self, limit: int) -> int:
        """Slots kept free of lower tiers for the established tier's next calls."""
        return self.first_demand.reserve(self.by_tier[TIER_ORDER[0]] + self.others.established, limit,
                                         self.reserve_budget.slots)

    def _dispatch(self) -> None:
        self._note_idle()
        if not any(self.queues.values()):
            return  # nobody waits (most calls' end, in calm): nothing to start
        terms = self.policy.terms(self.level())
        first = TIER_ORDER[0]
        if not self._start_waiting(first, terms, False):
            return  # nothing goes before a waiting established call
        # each lower tier its share, in tier order; then, where the level lets them, the slots left over
        for spare in (False, True) if terms.spare != "none" else (False,):
            for tier in LOWER_TIERS:
                if not self._start_waiting(tier, terms, spare) and not spare and \
                        self._room(tier, terms, self.limit) > 0:
                    break  # it waits for slots, not for its share: the tiers below it wait behind it
        if any(map(self.queues.__getitem__, LOWER_TIERS)):
            self._look_again()

    def _start_waiting(self, tier: str, terms: LevelTerms, spare: bool) -> bool:
        """Start the tier's waiting calls while they may go; True when none is left waiting."""
        queue = self.queues[tier]
        while queue and self._may_start(tier, terms, spare):
            ticket = queue.popleft()
            self._dequeued(ticket)
            if ticket._future is not None and not ticket._future.done():
                self._start(ticket)
                ticket._future.set_result(None)
        return not queue

    def first_token(self, ticket: Ticket) -> None:
        """The call's first token: from now it is being generated, not waiting in the model server's queue."""
        if not ticket.generating:
            ticket.generating = True
            self.limiter.generating(+1)
            # sampled now, not when the call ends: a round of the limit is then a first token's wait, not a
            # whole generation (minutes, for a long one)
            limit = self.limit
            self._sample("ttft", time.monotonic() - ticket.started, self.total_in_flight, ticket)
            if self.limit > limit and self.queued:
                self._dispatch()  # (no call ended to say so)

    def _look_again(self) -> None:
        """A lower tier waits with slots free: the established tier's reserve holds it back, and the reserve
        decays with no call ending to say so. Look again shortly."""
        if self._retry is None and self.in_flight < self.own_limit(self.limit):
            self._retry = asyncio.get_running_loop().call_later(0.25, self._redispatch)

    def _redispatch(self) -> None:
        self._retry = None
        self._dispatch()

    def release(self, ticket: Ticket, *, latency: tuple[str, float] | tuple[str, float, int] | None = None,
                overloaded: bool = False) -> None:
        """`latency`: (kind, seconds), or (kind, seconds a part, parts) where the call's time was shared out
        (a whole answer's per token)."""
        if ticket.released:
            return
        ticket.released = True
        if ticket.generating:
            ticket.generating = False
            self.limiter.generating(-1)
        self.in_flight -= 1
        self.by_tier[ticket.tier] -= 1
        self.by_account[ticket.account] -= 1
        if self.by_account[ticket.account] <= 0:
            del self.by_account[ticket.account]
        if overloaded:
            self.limiter.overloaded()
            self.by_figures.overloaded()
        elif latency is not None:
            self._sample(latency[0], latency[1], self.total_in_flight + 1, ticket, *latency[2:])
        self._dispatch()

    def _sample(self, kind: str, latency: float, in_flight: int, ticket: Ticket, parts: int = 1) -> None:
        """Learnt even while figures set the limit: it stands in when they go stale. A call's latency spans a
        few trips through this event loop: what the loop added is taken out (its share, where the call's time
        was shared out over `parts`)."""
        self.limiter.sample(kind, latency, in_flight, ticket.started, excused=3 * self.loop_lag.lag / parts)

    async def reconcile(self, ticket: Ticket, used: int) -> None:
        """Charge the token budgets what the call really used instead of the estimate."""
        if ticket.buckets and used != ticket.estimate:
            more = used - ticket.estimate  # (a Bucket built, not _replace: two Python calls a bucket)
            self.store.charge_later([Bucket(b.rule, b.ident, b.interval, b.tolerance, more) for b in ticket.buckets])


def _busy(tier: str) -> ApiError:
    return ApiError(503, "The model is at capacity. Please retry shortly; established accounts are served first.",
                    "model_busy", retry_after=5 if tier != "established" else 2, reason=f"admission/{tier}")
