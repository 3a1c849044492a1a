"""How many calls the model server may run: the limit learnt from latency, the one read from the server's own
figures, and how much the established tier's reserve may leave idle."""

from __future__ import annotations

import pytest

from floodwall.inference.capacity import FiguresLimit, GradientLimit, IdleBudget
from floodwall.inference.model_metrics import Reading
from tests.conftest import Clock


def test_gradient_limit_learns_from_latency_and_overload() -> None:
    limit = GradientLimit(initial=8, minimum=1, maximum=64, clock=Clock())
    limit.generating(0)  # streamed calls are seen (none generating): the floor is theirs to set
    for _ in range(50):  # latency stays at its baseline while the limit is used: it grows
        limit.sample("ttft", 0.05, in_flight=limit.limit)
    grown = limit.limit
    assert grown > 8
    for step in range(30):  # the model server starts queueing: latency triples, the limit comes down
        limit.sample("ttft", 0.15 + 0.01 * step, in_flight=limit.limit)
    assert limit.limit < grown
    before = limit.limit
    limit.overloaded()
    assert limit.limit < before or before == 1
    idle = GradientLimit(initial=8, minimum=1, maximum=64)
    for _ in range(50):  # not using the limit is no evidence for raising it
        idle.sample("ttft", 0.05, in_flight=1)
    assert idle.limit == 8


def test_whole_answers_set_the_floor_at_the_concurrency_answered_at_the_usual_latency() -> None:
    """Whole answers give no first token: while no stream is seen, a call answered at the usual latency sets
    the floor at its concurrency (the review of issue 23: the limit fell to 1 for a non-streaming service)."""
    clock = Clock()
    limit = GradientLimit(initial=16, minimum=1, maximum=64, clock=clock)
    for _ in range(300):
        clock.now += 0.1
        limit.sample("tpot", 0.05, in_flight=16)
    for _ in range(300):  # three times slower at the same concurrency
        clock.now += 0.1
        limit.sample("tpot", 0.15, in_flight=limit.limit)
    assert limit.limit >= 12  # the floor of 16, decayed over the 30 s


def test_a_slowdown_without_more_concurrency_is_not_queueing() -> None:
    """Issue 23: on a machine the flood also loads, every call gets slower at any concurrency. The limit holds
    at the concurrency the server has shown it serves (Little's law over calls generating, queueing left
    out); that floor halves every floor_half_life, so a server that really shrank is not over-driven for long."""
    clock = Clock()
    limit = GradientLimit(initial=8, minimum=1, maximum=64, clock=clock, floor_half_life=120)
    for _ in range(8):  # eight calls generating at once, for ten seconds
        limit.generating(+1)
    for _ in range(100):
        clock.now += 0.1
        limit.sample("ttft", 0.05, in_flight=12)  # four more wait inside the server: they are not served
    limit.generating(0)
    assert 7.9 < limit.floor <= 8.0
    for _ in range(200):  # four times slower, the same eight generating: the machine is busy, not the server
        clock.now += 0.05
        limit.generating(0)  # (calls come and go: each one closes a window when it is due)
        limit.sample("ttft", 0.2, in_flight=limit.limit)
    assert limit.limit >= 8
    for _ in range(8):
        limit.generating(-1)
    limit.overloaded()  # a 503: the server is full; the floor comes down with the limit
    assert limit.floor < 7
    for step in range(400):  # slow for ten minutes more, nothing generating: the floor decays and the limit
        clock.now += 1.5     # comes down
        limit.sample("ttft", 0.2 + step * 0.001, in_flight=limit.limit)
    assert limit.limit < 6 and limit.floor < 0.5


def test_a_late_event_loop_never_makes_calls_look_faster_than_usual() -> None:
    """Issue 23 at 16 slots: under the flood the worker's own lateness (its loop's lag) was taken off each
    call's latency down to zero, so the flooded worker's calls read faster than any the server had served,
    the baseline followed them down, every call then looked slow, and the limit fell to half the slots. The
    lag may explain a slow call, never make one look faster than usual."""
    import random

    clock = Clock()
    limit = GradientLimit(initial=16, minimum=1, maximum=64, clock=clock)
    limit.generating(0)  # streamed calls (none generating here): the floor is theirs to set
    for _ in range(600):  # calm: 20 ms to the first token at sixteen calls, the loop on time
        clock.now += 0.02
        limit.sample("ttft", 0.02, in_flight=limit.limit)
    calm = limit.limit
    assert calm >= 16
    noise = random.Random(7)
    for _ in range(600):  # flooded: the loop runs 0-15 ms late, and each call's latency carries its share
        clock.now += 0.02
        lag = noise.uniform(0.0, 0.015)
        limit.sample("ttft", 0.02 + noise.uniform(0.0, 2 * lag), in_flight=limit.limit, excused=3 * lag)
    assert limit.baseline["ttft"] > 0.018 and limit.limit >= calm
    for _ in range(300):  # the server itself queues: the calls are slower than the loop's lag explains
        clock.now += 0.02
        lag = noise.uniform(0.0, 0.015)
        limit.sample("ttft", 0.2, in_flight=limit.limit, excused=3 * lag)
    assert limit.limit < calm


def test_the_model_servers_own_figures_set_the_limit() -> None:
    figures = FiguresLimit(initial=8, minimum=1, maximum=64)
    figures.observe(Reading(running=8, waiting=0, cache=0.5, at=0), in_flight=8)  # all in use, none waits
    assert figures.value == 10  # a quarter more
    figures.observe(Reading(running=4, waiting=0, cache=0.5, at=0), in_flight=4)  # room to spare: hold
    assert figures.value == 10
    figures.observe(Reading(running=6, waiting=3, cache=1.0, at=0), in_flight=9)  # requests wait inside
    assert figures.value == 6 and figures.capacity == 6
    # a queue longer than all floodwall has out is others' (or a stale gauge): it does not lower floodwall's
    figures.observe(Reading(running=6, waiting=9, cache=1.0, at=0), in_flight=6)
    assert figures.value == 6
    for odd in (float("inf"), float("nan")):
        figures.observe(Reading(running=odd, waiting=odd, cache=None, at=0), in_flight=6)
        assert figures.value == 6


def test_the_figures_limit_grows_by_a_quarter_to_the_capacity_and_one_at_a_time_past_it() -> None:
    """Slow start: while the server runs all floodwall sends and nothing waits, a quarter more a reading (one
    a reading took 2 s to go from 12 to 16); never past the capacity the server showed in one step, and past
    it one more every PROBE_EVERY. Held below the limit (`pressed`, not using it all): one at a time."""
    figures = FiguresLimit(initial=12, minimum=1, maximum=64)
    at = 0.0
    seen = []
    for _ in range(3):
        at += 0.25
        figures.observe(Reading(running=figures.value, waiting=0, cache=None, at=at), in_flight=figures.value)
        seen.append(figures.value)
    assert seen == [15, 18, 22]
    figures.observe(Reading(running=16, waiting=6, cache=None, at=at + 0.25), in_flight=22)  # the server's 16
    assert figures.value == 16 and figures.capacity == 16
    figures.value = 10  # (a moment of low figures)
    steps = []
    for k in range(1, 5):
        figures.observe(Reading(running=figures.value, waiting=0, cache=None, at=at + 0.25 + k * 0.25),
                        in_flight=figures.value)
        steps.append(figures.value)
    assert steps == [12, 15, 16, 16]  # back to the capacity, not past it; past it only after PROBE_EVERY
    figures.observe(Reading(running=16, waiting=0, cache=None, at=at + 3.0), in_flight=16)
    assert figures.value == 17
    pressed = FiguresLimit(initial=12, minimum=1, maximum=64)
    pressed.observe(Reading(running=9, waiting=0, cache=None, at=0.25), in_flight=9, pressed=True)
    assert pressed.value == 13


def test_the_limit_comes_down_once_a_round_not_once_a_call() -> None:
    """A stall of the machine slows every call out at once. Those calls were admitted under the limit before
    it came down: their latency says nothing of the new one (as TCP halves its window once a round trip, not
    once a lost packet), so a second of slow calls does not take a limit of 19 down to the floor."""
    clock = Clock()
    limit = GradientLimit(initial=19, minimum=1, maximum=64, clock=clock)
    for _ in range(100):
        clock.now += 0.01
        limit.sample("ttft", 0.02, in_flight=19, started=clock.now - 0.02)
    stall = clock.now
    clock.now += 0.001
    for _ in range(30):  # thirty calls begun before the stall all end slow, one after another
        clock.now += 0.01
        limit.sample("ttft", 0.07, in_flight=19, started=stall - 0.05)
    assert limit.limit >= 16  # one cut, not thirty (19 x 0.9 = 17.1)
    before = limit.limit
    clock.now += 0.01
    limit.sample("ttft", 0.07, in_flight=19, started=clock.now - 0.001)  # a call begun since: a new round
    assert limit.limit < before


def test_past_the_capacity_the_figures_limit_tries_one_more_only_every_few_seconds() -> None:
    figures = FiguresLimit(initial=8, minimum=1, maximum=64)
    figures.observe(Reading(running=8, waiting=1, cache=None, at=10.0), in_flight=9)  # full at 8
    assert figures.value == 8 and figures.capacity == 8
    figures.observe(Reading(running=8, waiting=0, cache=None, at=10.25), in_flight=8)
    assert figures.value == 8  # none waits, but the last try was a quarter second ago: not again yet
    figures.observe(Reading(running=8, waiting=0, cache=None, at=12.5), in_flight=8)
    assert figures.value == 9  # none has waited for two seconds: one more
    figures.observe(Reading(running=9, waiting=0, cache=None, at=12.75), in_flight=9)
    assert figures.value == 9  # (and the next try as long after)
    # a reading a little old: one call ended since, so floodwall's count looks one short of the capacity
    figures.observe(Reading(running=9, waiting=1, cache=None, at=13.0), in_flight=9)
    assert figures.value == 8 and figures.capacity == 9
    figures.observe(Reading(running=8, waiting=0, cache=None, at=13.25), in_flight=8)
    assert figures.value == 9  # below the capacity it comes back at once


def wait_periods(budget: IdleBudget, clock: Clock, seconds: int, idle: int, reserve: int, limit: int = 16) -> None:
    """`seconds` of lower tiers waiting with `idle` of `limit` slots idle and `reserve` kept, noted every 1/8 s."""
    for _ in range(seconds * 8):
        budget.note(idle=idle, limit=limit, waiting=True, reserve=reserve)
        clock.now += 0.125
    budget.note(idle=idle, limit=limit, waiting=True, reserve=reserve)


def test_the_reserve_may_keep_only_what_leaves_the_limit_idle_within_its_budget() -> None:
    clock = Clock()
    budget = IdleBudget(0.1, clock=clock)
    budget.note(idle=0, limit=16, waiting=False, reserve=0)
    clock.now += 5
    budget.note(idle=8, limit=16, waiting=False, reserve=8)  # idle, but nobody waits: no evidence either way
    assert budget.slots > 16
    wait_periods(budget, clock, 1, idle=8, reserve=8)  # half the limit idle while new accounts wait
    assert budget.slots == 8 - 7  # what it kept, less the slots idle beyond the budget: (0.5 - 0.1) x 16
    wait_periods(budget, clock, 3, idle=0, reserve=1)  # then the slots are busy while they wait: back up, one a second
    assert budget.slots == 1 + 3


@pytest.mark.parametrize("idle", [1, 2])
def test_a_tenth_of_sixteen_slots_is_one_and_a_half(idle: int) -> None:
    clock = Clock()
    budget = IdleBudget(0.1, clock=clock)
    wait_periods(budget, clock, 1, idle=idle, reserve=3)
    # 1 of 16 is within the budget of 1.6, but not within half of it: held; 2 is over: one less than was kept
    assert budget.slots == (1 << 30 if idle == 1 else 2)


def test_idle_slots_that_are_not_the_reserves_take_it_to_nothing() -> None:
    """New accounts held back by their share, not by the reserve: nothing to give back but the reserve."""
    clock = Clock()
    budget = IdleBudget(0.1, clock=clock)
    wait_periods(budget, clock, 1, idle=6, reserve=0)
    assert budget.slots == 0


def lend_periods(budget: IdleBudget, clock: Clock, seconds: int, unlent: int, first_waiting: bool = False,
                 limit: int = 16) -> None:
    """`seconds` of calls waiting beyond their shares with `unlent` slots free that only the shares keep idle
    (`first_waiting`: and an established call waiting while slots are lent)."""
    for _ in range(seconds * 8):
        budget.note(idle=0, limit=limit, waiting=False, reserve=0, unlent=unlent, lent_waited=first_waiting)
        clock.now += 0.125
    budget.note(idle=0, limit=limit, waiting=False, reserve=0, unlent=unlent, lent_waited=first_waiting)


def test_slots_the_shares_alone_keep_idle_are_lent_and_taken_back_when_established_calls_wait() -> None:
    """spare = "idle": a share is a cap that idles slots when the established calls dip. Each second in which
    calls waited beyond their shares with slots idle beyond the budget, one more is lent; the lending stands
    while it keeps the slots busy, halves for each second an established call waited while some were lent,
    never passes its bound, and ends with the wave."""
    clock = Clock()
    budget = IdleBudget(0.05, clock=clock)
    assert budget.lent == 0
    lend_periods(budget, clock, 1, unlent=3)  # 3 of 16 idle (19%): one more, not all three at once
    assert budget.lent == 1
    lend_periods(budget, clock, 3, unlent=1)  # 1 of 16 (6%) is still beyond the 5%
    assert budget.lent == 4
    lend_periods(budget, clock, 2, unlent=0)  # busy: the lending stands
    assert budget.lent == 4
    lend_periods(budget, clock, 1, unlent=0, first_waiting=True)  # an established call waited while lent
    assert budget.lent == 2
    # nobody waits beyond a share (the established call still waiting as the second began: halved once more),
    # then for a whole second: the wave is over
    lend_periods(budget, clock, 2, unlent=-1)
    assert budget.lent == 0
    lend_periods(budget, clock, 3, unlent=8, first_waiting=True)
    assert budget.lent == 0
    for _ in range(20):
        budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=16, lendable=2)
        clock.now += 1
    assert budget.lent == 2  # never past its bound
    budget.note(idle=0, limit=4, waiting=False, reserve=0, unlent=0, lendable=0)
    assert budget.lent == 0  # the limit fell: the bound with it, at once


def test_a_long_wait_with_no_change_between_halves_the_lending_for_each_second() -> None:
    clock = Clock()
    budget = IdleBudget(0.05, clock=clock)
    budget.lent = 8
    budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=0, lent_waited=True)
    clock.now += 3.0
    budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=0, lent_waited=True)
    assert budget.lent == 1


def test_lending_does_not_move_the_reserve() -> None:
    """The same seconds of waiting, with and without slots only the shares keep idle: the reserve is cut and
    grows back alike; only the lending differs."""
    budgets = []
    for unlent in (-1, 4):
        clock = Clock()
        budget = IdleBudget(0.05, clock=clock)
        for idle, seconds in ((8, 1), (0, 3)):  # half the limit idle for a second (cut), then busy (back up)
            for _ in range(seconds * 8):
                budget.note(idle=idle, limit=16, waiting=True, reserve=8, unlent=unlent)
                clock.now += 0.125
            budget.note(idle=idle, limit=16, waiting=True, reserve=8, unlent=unlent)
        budgets.append(budget)
    without, lending = budgets
    assert without.slots == lending.slots < 8
    assert without.lent == 0 and lending.lent > 0


def test_a_refusal_by_the_server_is_not_undone_by_the_next_reading() -> None:
    """A 503 from the server cuts the limit by a fifth: the slow start must not take it back at the next
    reading (adversarial review of the slow start); past the cut, one more every PROBE_EVERY."""
    figures = FiguresLimit(initial=20, minimum=1, maximum=64)
    figures.observe(Reading(running=18, waiting=0, cache=None, at=0.0), in_flight=18)
    figures.overloaded()
    assert figures.value == 16
    figures.observe(Reading(running=16, waiting=0, cache=None, at=0.25), in_flight=16)
    assert figures.value == 16
    figures.observe(Reading(running=16, waiting=0, cache=None, at=2.0), in_flight=16)
    assert figures.value == 17


def test_a_reading_behind_the_calls_out_grows_the_limit_by_one() -> None:
    """The server shows fewer than floodwall has sent (the reading is older than the calls): it has not run
    them yet, so that is no evidence for a quarter more."""
    figures = FiguresLimit(initial=16, minimum=1, maximum=64)
    for k in range(1, 5):
        figures.observe(Reading(running=16, waiting=0, cache=None, at=k * 0.25), in_flight=figures.value)
    assert figures.value == 23  # 20 (a quarter of 16: the server ran all 16), then one a reading: 21, 22, 23


def test_refusals_sent_at_one_limit_cut_it_once() -> None:
    """Eight calls refused together (a server that refuses past its capacity rather than queueing) were sent
    at one limit: one cut, not 0.8 ** 8, which would then stand as the capacity (second review)."""
    figures = FiguresLimit(initial=40, minimum=1, maximum=64)
    figures.observe(Reading(running=32, waiting=0, cache=None, at=1.0), in_flight=32)
    for _ in range(8):
        figures.overloaded()
    assert figures.value == 32 and figures.capacity == 32
    figures.observe(Reading(running=30, waiting=0, cache=None, at=1.25), in_flight=30)
    figures.overloaded()
    assert figures.value == 25  # the next reading's refusals: a cut again


def test_a_refusal_before_any_reading_cuts_without_a_capacity() -> None:
    figures = FiguresLimit(initial=20, minimum=1, maximum=64)
    figures.overloaded()
    assert figures.value == 16 and figures.capacity is None


def test_a_wait_noted_as_a_period_closes_halves_nothing_yet() -> None:
    """The established call that queues at the note closing a period has not waited in it (second review)."""
    clock = Clock()
    budget = IdleBudget(0.05, clock=clock)
    budget.lent = 2
    budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=0)
    clock.now += 1.5
    budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=0, lent_waited=True)
    assert budget.lent == 2
    clock.now += 0.7  # then it waits 0.7 s, across no boundary: one halving at the next period's close
    budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=0)
    clock.now += 0.5
    budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=0)
    assert budget.lent == 1


def test_a_wave_that_ended_ends_the_lending_though_an_established_call_waited() -> None:
    clock = Clock()
    budget = IdleBudget(0.05, clock=clock)
    budget.lent = 4
    budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=-1, lent_waited=True)
    clock.now += 1.5
    budget.note(idle=0, limit=16, waiting=False, reserve=0, unlent=-1)
    assert budget.lent == 0
