"""Priority access to the model: budgets, caps, a learnt limit, and a queue that serves established first."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from floodwall.errors import ApiError
from floodwall.inference import capacity
from floodwall.inference.admission import Admission, Ticket
from floodwall.inference.model_metrics import Reading
from floodwall.inference.replicas import Others
from floodwall.inference.terms import AdmissionPolicy, estimate_cost
from floodwall.principal import Principal
from floodwall.state.memory import MemoryStore

NOW = dt.datetime.now(dt.UTC)


def who(user: int, key: int | None = None) -> Principal:
    return Principal(user, f"u{user}@example.com", NOW, False, key)


def body(max_tokens: int = 10, text: str = "hello") -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def admission(level: str = "normal", **policy: Any) -> Admission:
    data = {"initial_limit": 1, "min_limit": 1, "max_limit": 1, "queue_size": 4, **policy}
    return Admission(AdmissionPolicy.from_data(data, "test"), MemoryStore(), lambda: level)


async def started(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(0.01)
    return task.done() and task.exception() is None


async def test_established_go_first_whatever_the_arrival_order() -> None:
    gate = admission()
    first = await gate.admit(who(1), "established", "normal", body())
    newcomer = asyncio.create_task(gate.admit(who(2), "new", "normal", body()))
    regular = asyncio.create_task(gate.admit(who(3), "established", "normal", body()))
    assert not await started(newcomer) and not await started(regular)
    gate.release(first)
    assert await started(regular) and not await started(newcomer)
    gate.release(regular.result())
    assert await started(newcomer)


async def test_slots_established_calls_wanted_lately_are_kept_for_them() -> None:
    """A call cannot be taken back once started: lower tiers fill a free slot only if the slots left still
    hold the established tier's recent peak (issue 23), and never the last one (a small server still serves
    them between established calls)."""
    gate = admission(initial_limit=4, max_limit=4)
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(3)]
    for ticket in regulars:
        gate.release(ticket)
    first_new = asyncio.create_task(gate.admit(who(10), "new", "normal", body()))
    second_new = asyncio.create_task(gate.admit(who(11), "new", "normal", body()))
    assert await started(first_new) and not await started(second_new)  # three kept for the peak of three
    for n in range(3):  # and the established calls find them at once
        await asyncio.wait_for(gate.admit(who(20 + n), "established", "normal", body()), 1)
    second_new.cancel()


async def test_a_reserve_that_decays_lets_a_waiting_lower_tier_in_and_a_ticket_is_released_once() -> None:
    gate = admission(initial_limit=4, max_limit=4, reserve_half_life=0.2)
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(4)]
    for ticket in regulars[1:]:
        gate.release(ticket)
    newcomer = asyncio.create_task(gate.admit(who(10), "new", "normal", body()))
    assert not await started(newcomer)  # the peak of four is kept while one established call runs
    await asyncio.wait_for(newcomer, 3)  # nothing is released: the decaying reserve lets it in by itself
    gate.release(regulars[0])
    gate.release(regulars[0])  # twice: counted once
    assert gate.in_flight == 1 and gate.by_tier["established"] == 0


async def test_a_reserve_that_leaves_slots_idle_while_others_wait_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23, work conservation: the slots kept for the established tier's peak idle while new accounts
    wait; beyond `reserve_idle` of the limit, the reserve gives them up."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.05)
    gate = admission(initial_limit=8, min_limit=8, max_limit=8, queue_size=16, reserve_idle=0.1)
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(6)]
    for ticket in regulars[1:]:
        gate.release(ticket)
    newcomers = [asyncio.create_task(gate.admit(who(10 + n), "new", "normal", body())) for n in range(6)]
    await asyncio.sleep(0.01)
    assert gate.in_flight == 3  # five of eight kept for the peak of six established calls
    async with asyncio.timeout(2):  # the reserve idled: it is cut, and the newcomers take its slots
        await asyncio.gather(*newcomers)
    # cut by the four slots the four waiting could use beyond the budget's 0.8: one is kept
    assert gate.stats()["reserve"]["most"] == 1 and gate.in_flight == 7


async def test_lower_tiers_hold_only_their_share_of_the_limit() -> None:
    gate = admission("under_attack", initial_limit=4, max_limit=4,
                     under_attack={"share": {"new": 0.25}})
    await gate.admit(who(1), "new", "under_attack", body())
    second_new = asyncio.create_task(gate.admit(who(2), "new", "under_attack", body()))
    assert not await started(second_new)  # 25% of 4: one new call at a time
    for user in (10, 11, 12):  # established calls still find room
        await gate.admit(who(user), "established", "under_attack", body())
    assert gate.in_flight == 4
    second_new.cancel()


async def test_where_the_level_lets_them_lower_tiers_take_the_slots_nobody_waits_for() -> None:
    """Work-conserving (issue 23): with `spare`, a share is what a tier is sure of, not a cap; established
    calls still go first, and a tier beyond its share never takes a slot another waits for within its own."""
    gate = admission(initial_limit=4, max_limit=4, reserve_half_life="1ms",
                     normal={"share": {"new": 0.25, "anonymous": 0.25}, "spare": True})
    news = [asyncio.create_task(gate.admit(who(n), "new", "normal", body())) for n in (1, 2, 3)]
    assert all([await started(task) for task in news])  # 25% of 4 is one, but nobody else waits
    regular = asyncio.create_task(gate.admit(who(10), "established", "normal", body()))
    fourth_new = asyncio.create_task(gate.admit(who(4), "new", "normal", body()))
    assert await started(regular) and not await started(fourth_new)  # the last slot: established first
    guest = asyncio.create_task(gate.admit(who(20), "anonymous", "normal", body()))
    assert not await started(guest)
    gate.release(regular.result())
    # the new tier holds three, beyond its share; the guest waits within its own: the freed slot is the guest's
    assert await started(guest) and not await started(fourth_new)
    gate.release(news[0].result())
    assert await started(fourth_new)


async def test_where_the_level_lends_lower_tiers_borrow_what_their_shares_leave_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """spare = "idle" (issue 23, work conservation): slots that only the shares keep idle while calls wait
    beyond them are lent, one more each period, up to half of what the shares leave the established tier; an
    established call that waits while slots are lent halves the lending, and goes first for the next slot."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.05)
    gate = admission(initial_limit=8, min_limit=8, max_limit=8, queue_size=16, reserve_half_life="1ms",
                     normal={"share": {"new": 0.25, "anonymous": 0.25}, "spare": "idle"})
    news = [asyncio.create_task(gate.admit(who(10 + n), "new", "normal", body())) for n in range(6)]
    await asyncio.sleep(0.01)
    assert gate.in_flight == 2  # a quarter of 8, at first
    await asyncio.sleep(0.5)  # 6 of 8 idle while four wait beyond the share: lent, at most (8 - 2 - 2) // 2
    assert gate.in_flight == 4 and gate.stats()["lent"] == 2
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(1, 5)]  # the slots left
    waiting_regular = asyncio.create_task(gate.admit(who(5), "established", "normal", body()))
    assert not await started(waiting_regular)
    await asyncio.sleep(0.1)  # periods in which an established call waited while slots were lent
    lent_call = [task for task in news if task.done()][-1]
    gate.release(lent_call.result())
    assert await started(waiting_regular)  # established first
    assert gate.stats()["lent"] < 2
    for ticket in (*regulars, waiting_regular.result()):
        gate.release(ticket)
    await asyncio.sleep(1.0)  # slots idle again while new calls wait: lent again (a look each 0.25 s)
    assert gate.stats()["lent"] == 2
    for task in news:
        task.cancel()


async def test_where_the_level_lends_the_slots_the_reserve_keeps_idle_count_against_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reserve's slots idle while lower tiers wait only beyond their shares: at a level that lends, those
    calls could take them, so they count against the reserve's budget as the ones waiting within their
    shares do (before, such a slot was in neither measure: at 16 slots under a flood, most of the idle)."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.05)
    gate = admission(initial_limit=8, min_limit=8, max_limit=8, queue_size=16, reserve_half_life="1h",
                     reserve_idle=0.1, normal={"share": {"new": 0.25}, "spare": "idle"})
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(6)]
    for ticket in regulars[1:]:
        gate.release(ticket)
    news = [asyncio.create_task(gate.admit(who(10 + n), "new", "normal", body())) for n in range(6)]
    await asyncio.sleep(0.01)
    assert gate.in_flight == 3  # the new tier at its share (2 of 8), five kept for the established peak of six
    # the reserve idled beyond its budget while new calls waited beyond their share: it is cut, and they borrow,
    # one more each look (every 0.25 s), at most half of what the share leaves: 3
    done, waiting = await asyncio.wait(news, timeout=2)
    assert len(done) == 2 + 3 and len(waiting) == 1 and gate.in_flight == 1 + 2 + 3
    assert gate.stats()["reserve"]["most"] < 5 and gate.stats()["lent"] == 3
    for task in news:
        task.cancel()


async def test_the_lendings_own_idle_slots_are_not_charged_to_the_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Free slots beyond the reserve, which the lending leaves idle while it grows a slot a period, are the
    lending's measure, not the reserve's: while established calls run at their peak (the reserve holds
    nothing) and new calls borrow, the next wave of established calls still finds the peak's slots. (A guard
    of the scenario a review raised; at this length it passes without the fix too: the regression test is
    the one below. Periods longer than the 0.25 s look, as the real one is.)"""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.3)
    gate = admission(initial_limit=12, min_limit=12, max_limit=12, queue_size=32, reserve_half_life="1h",
                     reserve_idle=0.1, normal={"share": {"new": 0.25}, "spare": "idle"})
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(6)]
    news = [asyncio.create_task(gate.admit(who(100 + n), "new", "normal", body())) for n in range(12)]
    await asyncio.sleep(1.2)  # the new tier at its share (3), the lending growing on the slots beyond
    assert gate.stats()["lent"] >= 1
    for ticket in regulars:
        gate.release(ticket)
    await asyncio.sleep(0.6)
    wave = [asyncio.create_task(gate.admit(who(n), "established", "normal", body())) for n in range(6)]
    done, _ = await asyncio.wait(wave, timeout=0.05)
    assert len(done) == 6  # the reserve kept the peak's six
    for task in news:
        task.cancel()


async def test_a_lending_that_fits_beyond_the_reserve_leaves_the_reserve_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The lending's bound (4) fits in the slots free beyond the reserve (5): it never needs the reserve's
    slots, so their idle is not the reserve's to answer for (from a review: it fell to 0 for some 18 periods)."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.3)
    gate = admission(initial_limit=12, min_limit=12, max_limit=12, queue_size=32, reserve_half_life="1h",
                     reserve_idle=0.1, normal={"share": {"new": 0.25}, "spare": "idle"})
    for ticket in [await gate.admit(who(n), "established", "normal", body()) for n in range(4)]:
        gate.release(ticket)  # a peak of four: four kept
    news = [asyncio.create_task(gate.admit(who(100 + n), "new", "normal", body())) for n in range(12)]
    for _ in range(6):
        await asyncio.sleep(0.3)
        assert gate._reserve(12) == 4
    lent = gate.stats()["lent"]
    assert lent >= 3 and gate.in_flight == 3 + lent  # one more lent each period, up to (12 - 3) // 2
    for task in news:
        task.cancel()


async def test_an_established_call_waiting_while_nothing_is_lent_leaves_the_lending(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """It waits for what the shares hold, as it would without lending: no reason to lend less."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.05)
    gate = admission(initial_limit=8, min_limit=8, max_limit=8, queue_size=16, reserve_half_life="1ms",
                     normal={"share": {"new": 0.25, "anonymous": 0.25}, "spare": "idle"})
    news = [asyncio.create_task(gate.admit(who(10 + n), "new", "normal", body())) for n in range(4)]
    async with asyncio.timeout(2):
        await asyncio.gather(*news)
    assert gate.stats()["lent"] == 2
    for task in news[2:]:
        gate.release(task.result())  # the new tier back at its share: nothing lent is out
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(1, 7)]
    waiting_regular = asyncio.create_task(gate.admit(who(7), "established", "normal", body()))
    more_new = asyncio.create_task(gate.admit(who(30), "new", "normal", body()))
    assert not await started(waiting_regular) and not await started(more_new)
    await asyncio.sleep(0.1)
    gate.release(regulars[0])
    assert await started(waiting_regular) and gate.stats()["lent"] == 2
    more_new.cancel()


async def test_a_lending_level_with_nothing_idle_lends_nothing() -> None:
    gate = admission(initial_limit=2, min_limit=2, max_limit=2, reserve_half_life="1ms",
                     normal={"share": {"new": 0.5}, "spare": "idle"})
    await gate.admit(who(1), "new", "normal", body())
    second = asyncio.create_task(gate.admit(who(2), "new", "normal", body()))
    await gate.admit(who(3), "established", "normal", body())
    assert not await started(second) and gate.stats()["lent"] == 0
    second.cancel()


async def test_a_tier_at_its_share_does_not_hold_back_the_tiers_below_it() -> None:
    gate = admission(initial_limit=4, max_limit=4, reserve_half_life="1ms",
                     normal={"share": {"new": 0.25, "anonymous": 0.25}})
    await gate.admit(who(1), "new", "normal", body())
    second_new = asyncio.create_task(gate.admit(who(2), "new", "normal", body()))
    assert not await started(second_new)  # without `spare` the share is a cap
    guest = asyncio.create_task(gate.admit(who(20), "anonymous", "normal", body()))
    assert await started(guest)  # the new tier waits for its share, not for slots: the guest's share is free
    second_new.cancel()


async def test_full_queue_sheds_the_newest_of_the_lowest_tier() -> None:
    gate = admission(queue_size=2)
    await gate.admit(who(1), "established", "normal", body())
    waiting = [asyncio.create_task(gate.admit(who(20 + i), "new", "normal", body())) for i in range(2)]
    await asyncio.sleep(0.01)
    regular = asyncio.create_task(gate.admit(who(3), "established", "normal", body()))
    await asyncio.sleep(0.01)
    with pytest.raises(ApiError) as shed:
        await waiting[1]
    assert shed.value.status == 503 and shed.value.reason == "admission/new" and shed.value.retry_after
    assert not waiting[0].done() and not regular.done()
    # the queue is full again (one new, one established): another newcomer is turned away at once
    with pytest.raises(ApiError) as turned_away:
        await gate.admit(who(4), "new", "normal", body())
    assert turned_away.value.reason == "admission/new"
    assert gate.shed["new"] == 2
    for task in (*waiting[:1], regular):
        task.cancel()


async def test_waiting_too_long_is_503_and_leaving_frees_the_place() -> None:
    gate = admission(max_wait={"new": "50ms"})
    await gate.admit(who(1), "established", "normal", body())
    with pytest.raises(ApiError) as busy:
        await gate.admit(who(2), "new", "normal", body())
    assert busy.value.code == "model_busy"
    leaving = asyncio.create_task(gate.admit(who(3), "established", "normal", body()))
    await asyncio.sleep(0.01)
    assert gate.queued == 1
    leaving.cancel()
    await asyncio.sleep(0.01)
    assert gate.queued == 0


async def test_token_budgets_refuse_before_the_call_and_reconcile_after() -> None:
    gate = admission(initial_limit=8, max_limit=8, normal={"tokens_per_minute": {"established": 1000}})
    ticket = await gate.admit(who(1, key=5), "established", "normal", body(max_tokens=600))
    with pytest.raises(ApiError) as refused:
        await gate.admit(who(1, key=6), "established", "normal", body(max_tokens=600))
    assert refused.value.status == 429 and refused.value.reason == "tokens/account"
    assert refused.value.type == "tokens"
    # the first call used far less than its estimate: the difference comes back
    gate.release(ticket)
    await gate.reconcile(ticket, used=20)
    await gate.admit(who(1, key=6), "established", "normal", body(max_tokens=600))


async def test_in_flight_cap_per_account() -> None:
    gate = admission(initial_limit=8, max_limit=8, normal={"in_flight": {"new": 2}})
    for _ in range(2):
        await gate.admit(who(1), "new", "normal", body())
    with pytest.raises(ApiError) as refused:
        await gate.admit(who(1), "new", "normal", body())
    assert refused.value.reason == "in-flight/account"
    await gate.admit(who(2), "new", "normal", body())


async def test_under_attack_caps_max_tokens_instead_of_refusing() -> None:
    gate = admission("under_attack", initial_limit=8, max_limit=8, under_attack={"max_tokens": {"new": 64}})
    asked = body(max_tokens=4000)
    await gate.admit(who(1), "new", "under_attack", asked)
    assert asked["max_tokens"] == 64
    unasked: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    await gate.admit(who(2), "new", "under_attack", unasked)
    assert unasked["max_tokens"] == 64
    regular = body(max_tokens=4000)
    await gate.admit(who(3), "established", "under_attack", regular)
    assert regular["max_tokens"] == 4000
    # every length field a model server may read is held, the small one too (the issue 22 finding)
    both = {**body(max_tokens=4000), "max_completion_tokens": 1}
    ticket = await gate.admit(who(4), "new", "under_attack", both)
    assert (both["max_tokens"], both["max_completion_tokens"]) == (64, 1) and ticket.estimate == 6 + 64
    # a null max_tokens (no limit, to the model server) is held to the cap and costed at it (review of 949efb6)
    null = {**body(), "max_tokens": None, "n": 2}
    ticket = await gate.admit(who(5), "new", "under_attack", null)
    assert null["max_tokens"] == 64 and ticket.estimate == 6 + 64 * 2


async def test_a_tier_may_be_held_to_one_completion_a_call() -> None:
    gate = admission("under_attack", initial_limit=8, max_limit=8,
                     under_attack={"max_choices": {"new": 1, "anonymous": 1}})
    for tier, asked in (("new", {"n": 2}), ("anonymous", {"best_of": 3})):
        with pytest.raises(ApiError) as refused:
            await gate.admit(who(1), tier, "under_attack", {**body(), **asked})
        assert refused.value.status == 400 and refused.value.reason == "admission/choices"
        assert refused.value.code == "too_many_choices"
    await gate.admit(who(1), "new", "under_attack", {**body(), "n": 1})
    ticket = await gate.admit(who(2), "established", "under_attack", {**body(max_tokens=10), "n": 4})
    assert ticket.estimate == 6 + 40


def test_cost_estimate() -> None:
    assert estimate_cost(body(max_tokens=100, text="x" * 400), 512) == (104, 100)
    assert estimate_cost({"model": "m", "prompt": "y" * 40}, 512) == (14, 512)
    assert estimate_cost({"model": "m", "input": ["a" * 8, "b" * 8]}, 512) == (8, 0)



async def test_admission_follows_the_figures_while_they_are_fresh() -> None:
    reading: list[Reading | None] = [None]
    gate = Admission(AdmissionPolicy.from_data({"initial_limit": 2, "min_limit": 1, "max_limit": 8}, "t"),
                     MemoryStore(), lambda: "normal", figures=lambda: reading[0])
    first = [await gate.admit(who(n), "established", "normal", body()) for n in range(2)]
    waiting = asyncio.ensure_future(gate.admit(who(3), "established", "normal", body()))
    assert not await started(waiting)
    assert gate.source == "latency"
    reading[0] = Reading(running=2, waiting=0, cache=None, at=0)
    gate.observe(reading[0])  # the server runs both and nothing waits: one more may go
    assert gate.source == "figures" and gate.limit == 3 and await started(waiting)
    reading[0] = Reading(running=2, waiting=1, cache=None, at=0)
    gate.observe(reading[0])
    assert gate.limit == 2
    for ticket in [*first, waiting.result()]:
        gate.release(ticket, latency=("ttft", 50.0))  # a latency sample does not move a limit set by figures
    assert gate.limit == 2 and gate.stats()["server"]["capacity"] == 2


def test_bad_admission_policy_is_named() -> None:
    from floodwall.config import ConfigError

    with pytest.raises(ConfigError, match="share"):
        AdmissionPolicy.from_data({"normal": {"share": {"new": 2}}}, "p")
    with pytest.raises(ConfigError, match="spare"):
        AdmissionPolicy.from_data({"normal": {"spare": "yes"}}, "p")
    with pytest.raises(ConfigError, match=r"normal in_flight: .*vip.*one of anonymous, established, new"):
        AdmissionPolicy.from_data({"normal": {"in_flight": {"vip": 2}}}, "p")
    with pytest.raises(ConfigError, match="initial_limit"):
        AdmissionPolicy.from_data({"initial_limit": 0}, "p")


@pytest.mark.parametrize("shared", ["memory", "redis"])
async def test_replicas_sharing_a_model_server_keep_to_one_limit_between_them(shared: str) -> None:
    """Two replicas of floodwall before one model server of four slots: what one admits, the other does not;
    when both want more than the four, each gets its share by what it wants; established calls waiting at
    one replica go before new accounts' calls at the other."""
    from tests.state.test_stores import redis_store

    store = MemoryStore() if shared == "memory" else redis_store()
    data = {"initial_limit": 4, "min_limit": 4, "max_limit": 4, "queue_size": 16, "reserve_half_life": 0.001}
    one, two = (Admission(AdmissionPolicy.from_data(data, "test"), store, lambda: "normal") for _ in range(2))
    one.SHARE_EVERY = two.SHARE_EVERY = 0.02
    one.start()
    two.start()
    try:
        async with asyncio.timeout(30):  # a wait that never ends fails here, where it waits
            first = [await one.admit(who(n), "established", "normal", body()) for n in range(3)]
            await asyncio.sleep(0.1)  # the board goes round
            assert two.others.in_flight == 3 and two.own_limit(two.limit) == 1
            second = [asyncio.create_task(two.admit(who(10 + n), "established", "normal", body())) for n in range(3)]
            await asyncio.sleep(0.1)
            assert sum(t.done() for t in second) == 1 and one.total_in_flight == two.total_in_flight == 4
            # both want more than four now: each its share by what it wants (3 of 6 each: two slots)
            one.release(first.pop())
            await asyncio.sleep(0.1)
            assert sum(t.done() for t in second) == 2 and one.in_flight + two.in_flight == 4
            # a newcomer at `one` waits while established calls wait at `two`, though `one` has room of its own
            newcomer = asyncio.create_task(one.admit(who(99), "new", "normal", body()))
            one.release(first.pop())
            await asyncio.sleep(0.1)
            assert all(t.done() for t in second) and not newcomer.done()
            for ticket in (*first, *(t.result() for t in second)):
                (one if ticket in first else two).release(ticket)
            await asyncio.sleep(0.1)
            assert newcomer.done() and one.in_flight == 1
            one.release(newcomer.result())
    finally:
        await one.stop()
        await two.stop()
        await store.close()


def test_a_replica_wanting_most_leaves_the_others_the_slot_they_are_owed() -> None:
    """Both replicas round their fair shares up; the one wanting most must not round into the one slot a
    small one is owed (adversarial review of 608db8f: 24 calls wanted against 1, 4 slots, it claimed all 4
    and took each freed slot back before the other's next round)."""
    gate = admission(initial_limit=4, max_limit=4)
    gate.queues["new"].extend(Ticket("new", n, None, [], 1, None) for n in range(24))
    gate._published = 4  # it told the others it ran four: its claim this round is all four
    gate.others = Others(replicas=1, in_flight=0, demand=1)
    assert gate.own_limit(4) == 3
    gate.others = Others(replicas=3, in_flight=0, demand=2)  # at most two of the three want any
    assert gate.own_limit(4) == 2


async def test_a_replica_whose_peers_stop_publishing_uses_the_whole_limit_again() -> None:
    store = MemoryStore()
    data = {"initial_limit": 2, "min_limit": 2, "max_limit": 2}
    one, two = (Admission(AdmissionPolicy.from_data(data, "test"), store, lambda: "normal") for _ in range(2))
    one.SHARE_EVERY = two.SHARE_EVERY = 0.02
    one.SHARE_TTL = two.SHARE_TTL = 0.1
    one.start()
    two.start()
    held = [await two.admit(who(n), "established", "normal", body()) for n in range(2)]
    await asyncio.sleep(0.08)
    assert one.own_limit(one.limit) == 0
    await two.stop()  # gone, with its calls (a crashed replica): after the ttl its figures no longer count
    await asyncio.sleep(0.2)
    assert one.others.replicas == 0 and one.own_limit(one.limit) == 2 and len(held) == 2
    await one.stop()


@pytest.mark.parametrize("lag", [0.0, 0.01])
async def test_a_whole_answers_per_token_time_is_excused_only_its_share_of_the_loops_lag(lag: float) -> None:
    """Review of issue 23: a whole answer's latency is its time per token, and the loop's lateness delays the
    call once, not every token: what is excused is the lag's share of one token (the lag in whole seconds
    hid answers three times slower than usual, and the limit never came down)."""
    from collections import deque

    from tests.conftest import Clock

    clock = Clock()
    gate = Admission(AdmissionPolicy.from_data({"initial_limit": 16, "min_limit": 1, "max_limit": 64}, "t"),
                     MemoryStore(), lambda: "normal")
    gate.limiter = capacity.GradientLimit(initial=16, minimum=1, maximum=16, clock=clock)  # at the limit
    gate.limiter.generating(0)  # the floor is the streams' to set (none here)
    gate.loop_lag.lag = lag  # a flooded worker's loop, 10 ms late
    out = deque([await gate.admit(who(n), "established", "normal", body()) for n in range(16)])
    for per_token, calls in ((0.02, 400), (0.06, 200)):  # 200-token answers: usual, then three times slower
        for n in range(calls):
            clock.now += 0.05
            gate.release(out.popleft(), latency=("tpot", per_token, 201))
            while gate.in_flight < gate.limit:  # as many out as the limit lets (never waiting here)
                out.append(await gate.admit(who(100 + n), "established", "normal", body()))
        if per_token == 0.02:
            usual = gate.limit
    assert gate.limit < usual
    for ticket in out:
        gate.release(ticket)


async def test_an_accounts_waiting_calls_count_toward_its_cap() -> None:
    """The cap on an account's calls at once counts those waiting too: they would all start as slots free
    (adversarial review of 608db8f: one anonymous account, capped at one, held three slots)."""
    gate = admission(initial_limit=4, max_limit=4, queue_size=8, reserve_half_life="1ms",
                     normal={"share": {"anonymous": 0.25}, "in_flight": {"anonymous": 1}, "spare": True})
    regulars = [await gate.admit(who(n), "established", "normal", body()) for n in range(4)]
    first = asyncio.create_task(gate.admit(who(20), "anonymous", "normal", body()))
    assert not await started(first)  # it waits for a slot
    with pytest.raises(ApiError) as capped:
        await gate.admit(who(20), "anonymous", "normal", body())
    assert capped.value.reason == "in-flight/account"
    first.cancel()
    await asyncio.sleep(0)
    second = asyncio.create_task(gate.admit(who(20), "anonymous", "normal", body()))  # its first left the queue
    for ticket in regulars:
        gate.release(ticket)
    assert await started(second) and gate.by_account[20] == 1 and not gate.waiting_by_account


async def test_nothing_more_is_lent_while_something_else_holds_the_calls_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The slots idle while another replica has calls waiting are not the shares' doing: lending them would
    grow untested, and go out at once when that queue empties (adversarial review of the lending)."""
    monkeypatch.setattr(capacity.IdleBudget, "PERIOD", 0.05)
    gate = admission(initial_limit=16, min_limit=16, max_limit=16, queue_size=32, reserve_half_life="1ms",
                     normal={"share": {"new": 0.25, "anonymous": 0.25}, "spare": "idle"})
    gate.others = Others(replicas=1, in_flight=0, demand=1)
    news = [asyncio.create_task(gate.admit(who(n), "new", "normal", body())) for n in range(10)]
    await asyncio.sleep(1.0)
    assert gate.stats()["lent"] == 0 and gate.by_tier["new"] == 4
    for task in news:
        task.cancel()


async def test_no_slot_beyond_a_share_is_lent_while_another_replica_has_calls_waiting() -> None:
    """The board does not say which tier waits at the other replicas, or within which share: no lending then
    (adversarial review of 608db8f: a flood of new calls at one replica starved the other's anonymous)."""
    gate = admission(initial_limit=4, max_limit=4, reserve_half_life="1ms",
                     normal={"share": {"new": 0.25}, "spare": True})
    gate.others = Others(replicas=1, in_flight=0, demand=1)  # one call waiting there, none running
    news = [asyncio.create_task(gate.admit(who(n), "new", "normal", body())) for n in range(3)]
    assert [await started(task) for task in news] == [True, False, False]  # its share, no more
    gate.others = Others(replicas=1, in_flight=1, demand=1)  # theirs started: nobody waits there now
    gate._dispatch()
    assert [await started(task) for task in news] == [True, True, False]  # its claim this round: half the free
