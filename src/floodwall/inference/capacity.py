"""How many calls the model server may be running at once, for admission: read from the server's own figures
when it publishes them (requests running and waiting), else learnt from its latency, never below what it has
shown it serves.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from floodwall.background import cancel
from floodwall.inference.model_metrics import Reading


class GradientLimit:
    """A concurrency limit that grows while latency stays near its baseline and shrinks when it rises
    (the model server is queueing inside) or when the server says it is full.

    After Gradient2, with one change for model servers: no standing queue is allowed for throughput's sake.
    A call queued inside the model server can no longer be put behind a more important one, so the limit
    grows by one per round of calls only while the recent latency stays within `tolerance` of the baseline.

    And one floor: the limit does not fall below the concurrency the server has shown it serves, because a
    slowdown with no rise in concurrency is not queueing: on a machine the flood also loads, every call is
    slower, at any concurrency. That concurrency is Little's law over calls generating (from first token to
    last: time waiting in the server's queue is left out), the time-average of how many were generating,
    over windows of WINDOW seconds. The floor is the largest lately, halving every `floor_half_life`
    seconds, so a server that really shrank is not over-driven for long; its 503s lower the limit and the
    floor at once.
    """

    WINDOW = 5.0
    ROUND = 1.0  # the longest a round lasts: a server queueing deep makes a call's first token come late

    def __init__(self, initial: int, minimum: int, maximum: int, tolerance: float = 1.5,
                 smoothing: float = 0.2, slack: float = 0.0, floor_half_life: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.value = float(initial)
        self.slack = slack
        self.minimum = minimum
        self.maximum = maximum
        self.tolerance = tolerance
        self.smoothing = smoothing
        self.baseline: dict[str, float] = {}  # long-run latency, per kind of sample
        self.recent: dict[str, float] = {}  # the last few calls' latency
        self.floor_half_life = floor_half_life
        self.clock = clock
        self._served = (0.0, 0.0)  # (concurrency served, when)
        self._generating = 0  # calls between their first token and their last
        self._changed = self._window = clock()
        self._integral = 0.0  # call-seconds of generation in this window
        self._streamed_at = float("-inf")  # when a call last said it was generating
        self._cut_at = float("-inf")  # when the limit last came down

    @property
    def limit(self) -> int:
        return max(self.minimum, int(self.value))

    @property
    def floor(self) -> float:
        """The concurrency the server has served lately, decayed by its age."""
        served, at = self._served
        return served * 0.5 ** ((self.clock() - at) / self.floor_half_life) if served else 0.0

    def overloaded(self) -> None:
        self.value = max(float(self.minimum), self.value * 0.8)
        served, at = self._served
        self._served = (served * 0.8, at)  # the server says it is full: what it served before is no promise

    def generating(self, delta: int) -> None:
        """A call began (+1) or ended (-1) generating: the server is serving it, not queueing it."""
        now = self.clock()
        self._streamed_at = now
        self._integral += self._generating * (now - self._changed)
        self._generating += delta
        self._changed = now
        if now - self._window >= self.WINDOW:
            served = self._integral / (now - self._window)
            if served >= self.floor:
                self._served = (served, now)
            self._window, self._integral = now, 0.0

    def sample(self, kind: str, latency: float, in_flight: int, started: float | None = None,
               excused: float = 0.0) -> None:
        """A call's latency (`kind`: to its first token, or per token), `in_flight` calls out when it ended,
        it began at `started` (this clock): the limit comes down at most once a round, by calls begun after
        it last did, as TCP's window does once a round trip: the calls already out when it came down were
        admitted under the old limit and say nothing of the new one, and a short stall of the machine (its
        calls all slow at once) would otherwise cut it again and again. A round lasts at most ROUND seconds:
        where the server queues deep, calls begun since the cut wait long for their first token, and the
        limit must still come down.

        `excused`: what of the latency the caller's own lateness may explain (its event loop's lag), taken off,
        but never below the baseline: lateness may explain a slow call, never show one faster than usual. Taken
        off to zero, as it was, the calls of a flooded worker read faster than any the server has served, the
        baseline (which follows a fall quickly) fell to half, every call then looked slow, and the limit fell to
        half the server's slots while calls waited (bench/saturation.py, 16 slots)."""
        if excused > 0.0:
            usual_latency = self.baseline.get(kind, latency)
            latency = max(latency - excused, min(latency, usual_latency))
        recent = self.recent.get(kind, latency) * (1 - self.smoothing) + latency * self.smoothing
        self.recent[kind] = recent
        # the baseline is the long-run average (about 500 calls), not the best ever seen: a model server's
        # latency jitters, and a baseline at its minimum would read the jitter as queueing. It follows a
        # fall quickly and a rise slowly, so a queue building inside the model server does not look normal
        # for long.
        baseline = self.baseline.get(kind, latency)
        baseline += (latency - baseline) * (0.05 if recent < baseline else 0.002)
        self.baseline[kind] = baseline
        usual = max(self.tolerance * baseline, baseline + self.slack)
        gradient = usual / max(recent, 1e-9)
        if latency <= usual and in_flight >= self.floor and self.clock() - self._streamed_at > 60.0:
            self._served = (float(in_flight), self.clock())
        if in_flight < self.value / 2:
            # far below the limit, latency says nothing about the limit: neither raise nor lower it
            return
        if gradient >= 1.0:
            self.value = min(float(self.maximum), self.value + 1.0 / self.value)
        elif started is None or started >= self._cut_at or self.clock() - self._cut_at >= self.ROUND:
            self._cut_at = self.clock()
            target = self.value * max(0.5, gradient)
            shrunk = self.value * (1 - self.smoothing) + target * self.smoothing
            # (rounded: the floor is measured per window and decays between them; 7.9 served is 8 slots)
            self.value = max(float(self.minimum), min(self.value, max(shrunk, float(round(self.floor)))))


class FiguresLimit:
    """The limit by the model server's own figures: keep its waiting queue near empty, so that floodwall's
    tiered queue, not the server's FIFO, decides who goes next. Requests waiting inside: the server runs what
    it can, and floodwall's share of that is what it has out less what waits; none waiting while floodwall
    uses all it may: a quarter more (GROWTH), up to the capacity, which is what the server ran when requests
    began to wait.

    Below that capacity the limit grows back by GROWTH a reading, never past it in one step (a reading is a
    little old: a call that ended since makes what floodwall has out look one short). Past it, one more is
    tried only after none has waited for PROBE_EVERY seconds: each try puts a call in the server's queue,
    where an established call may then wait behind it, so a limit that tried again on every empty reading
    would keep one there (a server's capacity does grow, as long prompts end and free its cache, but not
    every quarter second)."""

    PROBE_EVERY = 2.0
    # below the capacity, the limit grows by this share a reading while the server runs all it is sent: a
    # try that overshoots queues at most this share of a round's calls in the server, about as long a wait
    # for a call behind them (one more a reading took two seconds to find 16 slots from 12: docs/benchmarks.md)
    GROWTH = 0.25
    RECALL = 10.0  # a capacity not seen again (no queue) for this long is forgotten: it was a moment's

    def __init__(self, initial: int, minimum: int, maximum: int) -> None:
        self.value = initial
        self.minimum = minimum
        self.maximum = maximum
        self.capacity: float | None = None  # requests the server ran when its queue last began
        self._waited_at = float("-inf")  # when a reading last showed requests waiting
        self._tried_at = float("-inf")  # when the limit last went past the capacity
        self._read_at = float("-inf")  # the last reading's
        self._cut_at = float("nan")  # the reading after which the last 503 cut the limit

    def observe(self, reading: Reading, in_flight: int, pressed: bool = False) -> None:
        """A reading, with the calls floodwall has out; `pressed`: calls wait that the limit holds back
        (with the established tier's reserve, floodwall may be held below the limit and still want more)."""
        if not (math.isfinite(reading.running) and math.isfinite(reading.waiting)):
            return
        self._read_at = reading.at
        if reading.waiting > 0:
            self.capacity, self._waited_at = reading.running, reading.at
            if reading.waiting <= in_flight:  # a queue longer than all floodwall has out is not (all) ours
                self.value = max(self.minimum, min(self.value, int(in_flight - reading.waiting)))
        elif reading.waiting == 0 and (in_flight >= self.value or pressed):
            capacity = self.capacity
            recent = capacity is not None and reading.at - self._waited_at < self.RECALL
            if recent and capacity is not None and self.value >= capacity:  # past it: one more, now and then
                if reading.at - max(self._waited_at, self._tried_at) >= self.PROBE_EVERY:
                    self.value = min(self.maximum, self.value + 1)
                    self._tried_at = reading.at  # (the next try after as long again)
                return
            # below the capacity (even one forgotten: the best guess of where a queue starts), or none seen,
            # and the server has seen all floodwall sent (a reading may be older than the calls out) and ran
            # it with nothing waiting: a GROWTH more (slow start), never past that capacity in one step.
            # Else (past a capacity forgotten, pressed, a reading behind) one more, as before.
            below = capacity is None or self.value < capacity
            seen = reading.running + reading.waiting >= self.value
            step = max(1, int(self.value * self.GROWTH)) if below and seen and in_flight >= self.value else 1
            ceiling = self.maximum if capacity is None or not below else max(self.value + 1, int(capacity))
            self.value = min(self.maximum, ceiling, self.value + step)

    def overloaded(self) -> None:
        """The server refused a call as full (a 503 or 504; a 429 of its own reads as a 503): a fifth less, once
        a reading (the calls refused together were sent at one limit), and that is its capacity for a while
        (past it one more only every PROBE_EVERY, where a slow start would undo the cut at the next reading)."""
        if self._cut_at == self._read_at:
            return
        self.value = max(self.minimum, int(self.value * 0.8))
        self._cut_at = self._read_at
        if math.isfinite(self._read_at):  # (before any reading there is no time to keep it by)
            self.capacity, self._waited_at = float(self.value), self._read_at


class Peak:
    """The most calls a tier has wanted at once lately (running and waiting), halving every `half_life`
    seconds: what admission keeps free of lower tiers, so that the next established calls find a slot."""

    def __init__(self, half_life: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.half_life = half_life
        self.clock = clock
        self._peak = (0.0, 0.0)

    @property
    def value(self) -> float:
        peak, at = self._peak
        return peak * 0.5 ** ((self.clock() - at) / self.half_life) if self.half_life > 0 else 0.0

    def note(self, wanted: int) -> None:
        if wanted >= self.value:
            self._peak = (float(wanted), self.clock())

    def reserve(self, running: int, limit: int, most: int) -> int:
        """Slots to keep free for the tier, which runs `running` calls now, of `limit`: at most `most`, and
        never all of them, so that a small model server still serves the lower tiers between its calls."""
        return max(0, min(round(self.value) - running, most, limit - 1))


class IdleBudget:
    """The idle budget's two figures: how many slots the established tier's reserve may keep free, and how
    many lower tiers may borrow beyond their shares (`lent`, where a level lends them: `spare = "idle"`).
    Both as leave the limit idle at most `budget` of the time lower tiers' calls wait (a slot kept free
    while calls wait is a slot idle).

    Where the established calls fill what is kept for them (a model they nearly fill alone), the reserve
    idles little and may be large; where they do not (a large model), it idles about its whole size and must
    be small. Measured, not guessed: every PERIOD seconds in which lower tiers waited, the most the reserve
    may keep comes down by the slots idle beyond the budget, or goes up by one while at most half of it, or
    while nobody waits. Idle counts only as far as the waiting calls could use it (`note`'s caller): one
    call waiting does not cost the established tier its whole reserve.

    A share is a cap that idles slots too, when the established calls dip. In each period in which calls
    waited beyond their shares, the slots lent go up by one where the shares alone kept slots idle beyond the
    budget, and stay as they were otherwise; they are halved for each PERIOD in which an established call
    waited while some were lent (a lent slot cannot be taken back); a period in which no call waited beyond
    its share ends the lending. Never more than `lendable` (the caller's bound, with the limit of the moment).
    (An established call that waits while none is lent waits for what the shares hold, as it would without
    lending: that says nothing against it.)"""

    PERIOD = 1.0

    def __init__(self, budget: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.clock = clock
        self.most = math.inf  # until measured: the whole reserve
        self.lent = 0
        self._at = self._period = clock()
        self._idle = self._waited = 0.0  # slot-seconds idle, limit-seconds waited, while lower tiers waited
        self._held = 0  # the most the reserve kept in the period
        # slot-seconds only the shares kept idle, limit-seconds, while calls waited beyond their shares
        self._unlent = self._beyond = 0.0
        self._lent_waited = 0.0  # seconds an established call waited while slots were lent, in the period
        # (idle slots, limit, lower tiers waiting, slots only the shares keep idle, an established call waiting
        # while slots are lent)
        self._state = (0, 0, False, 0, False)

    def note(self, idle: int, limit: int, waiting: bool, reserve: int, unlent: int = -1,
             lent_waited: bool = False, lendable: int | None = None) -> None:
        """The slots idle of `limit` now, whether lower tiers' calls wait (as far as they could use them),
        the slots the reserve keeps, the slots free that only the shares keep from the calls waiting beyond
        them (-1: none waits beyond its share), whether an established call waits while slots are lent, and
        the most that may be lent now (None: as it was): the state until the next note."""
        now = self.clock()
        was_idle, was_limit, was_waiting, was_unlent, was_lent_waited = self._state
        if was_waiting:
            self._idle += max(0, was_idle) * (now - self._at)
            self._waited += was_limit * (now - self._at)
        if was_unlent >= 0:
            self._unlent += was_unlent * (now - self._at)
            self._beyond += was_limit * (now - self._at)
        if was_lent_waited:
            self._lent_waited += now - self._at
        self._at, self._state = now, (idle, limit, waiting, unlent, lent_waited)
        if waiting:
            self._held = max(self._held, reserve)
        if lendable is not None:
            self.lent = min(self.lent, lendable)
        if now - self._period < self.PERIOD:
            return
        if self._waited > 0:
            share = self._idle / self._waited
            if share > self.budget:  # (from what the reserve kept: idle slots may be a share's, not its)
                over = math.ceil((share - self.budget) * self._waited / (now - self._period))
                self.most = max(0.0, min(self.most, float(self._held)) - over)
            elif share <= self.budget / 2 and math.isfinite(self.most):
                self.most = min(self.most + 1, float(limit))
        elif math.isfinite(self.most):  # nobody waited: keeping slots cost nothing, and the next wave may come
            self.most = min(self.most + 1, float(limit))
        if self._beyond <= 0:
            self.lent = 0
        elif self._lent_waited > 0:  # halved for each PERIOD of it (a long wait with no change between)
            self.lent >>= max(1, min(32, int(self._lent_waited / self.PERIOD)))
        elif self._unlent / self._beyond > self.budget:
            self.lent = min(limit if lendable is None else lendable, self.lent + 1)
        # (the state carried into the next period counts there: calls still waiting, with the reserve of now)
        self._period, self._idle, self._waited, self._held = now, 0.0, 0.0, reserve if waiting else 0
        self._unlent, self._beyond, self._lent_waited = 0.0, 0.0, 0.0

    @property
    def slots(self) -> int:
        return int(self.most) if math.isfinite(self.most) else 1 << 30


class LoopLag:
    """How late this process's event loop runs its callbacks: a latency sample taken under a flood includes
    floodwall's own delay, which says nothing about the model server and must not shrink its limit."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        await cancel(self._task)

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            late = time.monotonic() - before - self.interval
            self.lag = self.lag * 0.8 + max(0.0, late) * 0.2
