"""An adversarial review of 495a5bb (the reserve's idle budget, the latency limit cut once a round, the
figures limit's probe every PROBE_EVERY), and of 0613ae7 (the fixes; the last test): scenarios their own tests
left out. Each test states what it expects of a correct admission; they failed against the commit reviewed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
from typing import Any

import pytest

from floodwall.inference import capacity
from floodwall.inference.admission import Admission
from floodwall.inference.capacity import FiguresLimit, GradientLimit, IdleBudget
from floodwall.inference.model_metrics import Reading
from floodwall.inference.terms import AdmissionPolicy
from floodwall.principal import Principal
from floodwall.state.memory import MemoryStore
from tests.conftest import Clock
from tests.inference.test_capacity import wait_periods

NOW = dt.datetime.now(dt.UTC)


def who(user: int) -> Principal:
    return Principal(user, f"u{user}@example.com", NOW, False, None)


def body() -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}


def gate_of_eight() -> Admission:
    """Eight slots, and the default policy's shares at `normal` (new accounts half the model, anonymous a
    quarter)."""
    data = {"initial_limit": 8, "min_limit": 8, "max_limit": 8, "queue_size": 32, "reserve_idle": 0.1,
            "normal": {"share": {"new": 0.5, "anonymous": 0.25}}}
    return Admission(AdmissionPolicy.from_data(data, "test"), MemoryStore(), lambda: "normal")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def drop(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.gather(*tasks, return_exceptions=True)


async def established_find_their_slots(gate: Admission, monkeypatch: pytest.MonkeyPatch, wave: int,
                                       *also: asyncio.Task[Any]) -> None:
    """With no more periods (what follows is at once), a wave of four new accounts' calls, then five
    established callers of the recent peak: all five find a slot at once."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 60.0)
    flood = [asyncio.create_task(gate.admit(who(wave + n), "new", "normal", body())) for n in range(4)]
    await settle()
    regulars_back = [asyncio.create_task(gate.admit(who(n), "established", "normal", body())) for n in range(1, 6)]
    await settle()
    try:
        assert sum(task.done() for task in regulars_back) == 5, (
            f"established calls of the recent peak wait: reserve {gate.stats()['reserve']}, "
            f"in flight {dict(gate.by_tier)}")
    finally:
        await drop([*also, *flood, *regulars_back])


async def test_one_waiting_call_does_not_disarm_the_whole_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attacker parks ONE cheap anonymous call in the queue for a second (and may cancel it: a call that
    never ran costs it nothing, its tokens are refunded). The reserve's six kept slots all count as idle
    "while lower tiers wait", so the reserve is cut to nothing, though one waiting call could use one slot.
    The attacker's new accounts then take the kept slots with long generations, and the established callers
    of the recent peak wait behind them. Work conservation asks the reserve for at most the slots the waiting
    calls could use."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.05)
    gate = gate_of_eight()
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(7)]
    for ticket in regulars[1:]:
        gate.release(ticket)  # a peak of seven: six slots kept, one free for lower tiers
    assert gate._reserve(gate.limit) == 6
    first = await gate.admit(who(100), "anonymous", "normal", body())
    probe = asyncio.create_task(gate.admit(who(101), "anonymous", "normal", body()))
    await asyncio.sleep(0.3)  # one call waited for a few periods
    await established_find_their_slots(gate, monkeypatch, 200, probe)
    del first


async def test_the_reserve_comes_back_when_the_wave_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut is forever while no lower tier waits: `most` only grows in periods where lower tiers wait with
    (almost) nothing idle. After a first wave, established callers come back to their peak of six for a
    while (nobody else waiting: keeping their slots costs no work), yet the reserve stays at 0, and the
    next wave of new accounts takes the slots at once."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.05)
    gate = gate_of_eight()
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(6)]
    for ticket in regulars[1:]:
        gate.release(ticket)
    wave = [asyncio.create_task(gate.admit(who(100 + n), "new", "normal", body())) for n in range(4)]
    async with asyncio.timeout(2):
        await asyncio.gather(*wave)  # the reserve idled while they waited: cut (as designed)
    assert gate.stats()["reserve"]["most"] < 5
    for task in wave:
        gate.release(task.result())  # the wave is over
    for _ in range(8):  # the established callers are back at their peak, again and again, nobody else waits
        back = [await gate.admit(who(n), "established", "normal", body()) for n in range(1, 6)]
        await asyncio.sleep(0.1)
        for ticket in back:
            gate.release(ticket)
    await established_find_their_slots(gate, monkeypatch, 300)


def test_a_budget_of_nothing_idle_still_lets_a_busy_reserve_grow_back() -> None:
    """reserve_idle = 0 is allowed by the policy (ge=0). Growth needs idle under half the budget: under 0,
    never. Once cut, the reserve never comes back, even while every slot is busy and lower tiers wait."""
    clock = Clock()
    budget = IdleBudget(0.0, clock=clock)
    wait_periods(budget, clock, 1, idle=4, reserve=4, limit=16)
    assert budget.slots == 0
    for _ in range(5):
        wait_periods(budget, clock, 1, idle=0, reserve=0, limit=16)  # not a slot idle, five seconds
    assert budget.slots >= 3


def test_a_good_period_does_not_cap_the_reserve_at_the_limit_of_the_moment() -> None:
    """The first period with nothing idle takes `most` from unmeasured (inf) to the limit of that moment
    (min(inf + 1, limit)): a period that is evidence FOR the reserve caps it. When the limit then grows
    (a figures limit climbing from initial_limit, a latency limit after a 503), the reserve is held at the
    old limit and climbs one slot a second."""
    clock = Clock()
    budget = IdleBudget(0.1, clock=clock)
    wait_periods(budget, clock, 1, idle=0, reserve=3, limit=4)  # the limit is 4 for now; nothing idles
    wait_periods(budget, clock, 1, idle=0, reserve=20, limit=32)  # it grew to 32; still nothing idles
    assert budget.slots >= 20


def _queueing_server(use_started: bool) -> tuple[int, float]:
    """A model server that ran 32 calls at once (10 s generations, 50 ms to the first token) and then runs
    only 8 (its KV cache taken by long prompts), FIFO behind them; the gateway keeps the limit out. The
    latency limit and its floor 120 s after the server shrank."""
    clock = Clock()
    limit = GradientLimit(32, 1, 64, slack=0.005, clock=clock)
    out: list[dict[str, float]] = []
    queue: collections.deque[dict[str, float]] = collections.deque()
    running: list[dict[str, float]] = []
    start, step = clock.now, 0.02
    while clock.now < start + 180:
        clock.now += step
        slots = 32 if clock.now < start + 60 else 8
        while len(out) < limit.limit:
            call = {"start": clock.now, "first": 0.0, "end": 0.0, "gen": 0.0}
            out.append(call)
            queue.append(call)
        while queue and len(running) < slots:
            call = queue.popleft()
            call["first"], call["end"] = clock.now + 0.05, clock.now + 10.05
            running.append(call)
        for call in list(running):
            if not call["gen"] and clock.now >= call["first"]:
                call["gen"] = 1.0
                limit.generating(+1)
                if use_started:  # (since the review: a stream's time to first token is sampled when it comes)
                    limit.sample("ttft", call["first"] - call["start"], len(out), call["start"])
            if clock.now >= call["end"]:
                running.remove(call)
                out.remove(call)
                limit.generating(-1)
                if not use_started:
                    limit.sample("ttft", call["first"] - call["start"], len(out) + 1)
    return limit.limit, limit.floor


def test_the_latency_limit_follows_a_queueing_server_down_to_what_it_serves() -> None:
    """Once a round, where a round is a call's whole life (it is sampled at its release) including its wait
    in the server's queue: the more the server queues, the longer the round and the rarer the cut. Two
    minutes after the server shrank to 8, per-call cuts keep the limit at the floor (what it has shown it
    serves, decaying); once-a-round cuts leave it well above, calls queued inside the server's FIFO where
    established calls wait behind them."""
    per_call, floor = _queueing_server(use_started=False)
    assert per_call <= round(floor) + 2  # (the behaviour before 495a5bb, for reference)
    per_round, floor = _queueing_server(use_started=True)
    assert per_round <= round(floor) + 2, f"limit {per_round}, floor {floor:.1f}"


@pytest.mark.parametrize(("running", "waiting"), [(6, 26), (0, 32)], ids=["long-prompts-burst", "restart"])
def test_after_a_moment_of_low_capacity_the_figures_limit_comes_back(running: int, waiting: int) -> None:
    """The capacity is the last reading with a queue, never forgotten. One such reading at a low figure
    (a burst of long prompts filling the KV cache, which attackers can send; a server restarting with
    everything waiting and nothing running yet) leaves every later try "past the capacity": one slot every
    two seconds, for good, though the server ran 32 a moment before."""
    figures = FiguresLimit(initial=32, minimum=1, maximum=64)
    figures.observe(Reading(running=32, waiting=1, cache=None, at=0.0), in_flight=33)
    assert figures.value == 32 and figures.capacity == 32
    figures.observe(Reading(running=running, waiting=waiting, cache=None, at=0.25), in_flight=32)
    assert figures.value <= 6
    at = 0.25
    for _ in range(80):  # twenty seconds: the server runs all the gateway sends, nothing waits
        at += 0.25
        figures.observe(Reading(running=figures.value, waiting=0, cache=None, at=at), in_flight=figures.value)
    assert figures.value >= 28, f"limit {figures.value} of the 32 the server ran 20 s ago"


async def test_pressed_growth_does_not_run_the_figures_limit_away_untested() -> None:
    """An established batch of 100 calls (peak 100) has drained to 2 running; one anonymous call waits. The
    reserve is min(peak - running, most, limit - 1) = limit - 1: it grows with the limit, so `pressed`
    (queued and in flight + reserve >= limit) stays true whatever the limit, and the figures limit climbs a
    slot per reading (no capacity seen, or forgotten after RECALL) while the server runs 2 calls and
    never queues. Nothing the server showed supports that limit; when the reserve is then cut (a flood of
    new accounts waiting, IdleBudget) or the peak decays, the lower tiers get the untested slots at once,
    and the server queues them ahead of the next established calls."""
    data = {"initial_limit": 20, "min_limit": 1, "max_limit": 512, "queue_size": 512,
            "normal": {"share": {"new": 0.5, "anonymous": 0.25}}}
    reading = Reading(running=0, waiting=0, cache=None, at=0.0)
    gate = Admission(AdmissionPolicy.from_data(data, "test"), MemoryStore(), lambda: "normal",
                     figures=lambda: reading)
    batch = [asyncio.create_task(gate.admit(who(n), "established", "normal", body())) for n in range(100)]
    await settle()
    released = 0
    while released < 98:
        for task in batch:
            if task.done() and not task.result().released and released < 98:
                gate.release(task.result())
                released += 1
        await settle()
    waiting = asyncio.create_task(gate.admit(who(201), "anonymous", "normal", body()))
    await settle()
    most_run = 0
    try:
        for k in range(1, 121):  # thirty seconds of readings: the server runs all it is sent, nothing waits
            most_run = max(most_run, gate.total_in_flight)
            reading = Reading(running=gate.total_in_flight, waiting=0, cache=None, at=k * 0.25)
            gate.observe(reading)
        assert gate.limit <= max(20, most_run + 1), (
            f"limit {gate.limit}, the server never ran more than {most_run}; reserve {gate.stats()['reserve']}")
    finally:
        waiting.cancel()
        with contextlib.suppress(BaseException):
            await waiting
        for task in batch:
            if task.done():
                gate.release(task.result())
