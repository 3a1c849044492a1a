"""Both Store homes give the same answers: exact GCRA, all-or-nothing, bans with escalation, levels, lists.
The Redis tests talk to the real server at 127.0.0.1:6379 (FLOODWALL_TEST_REDIS), each under its own prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from floodwall.limits import Bucket
from floodwall.state import redis as store_module
from floodwall.state.memory import MemoryStore
from floodwall.state.redis import RedisStore
from floodwall.state.store import Store, held_buckets

REDIS = os.environ.get("FLOODWALL_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_store(prefix: str | None = None, **options: Any) -> RedisStore:
    """A store under its own prefix, with generous timeouts: the suite's other processes load this machine,
    and a fallback to local limits (the product's fail-fast 0.25 s) would blur what a test counts."""
    options.setdefault("timeout", 2.0)
    return RedisStore(f"{REDIS}?prefix={prefix or f'fwtest-{secrets.token_hex(4)}:'}", **options)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else redis_store()
    yield made
    if isinstance(made, RedisStore):
        keys = [k async for k in made.client.scan_iter(f"{made.prefix}*")]
        if keys:
            await made.client.delete(*keys)
    await made.close()


def per_minute(count: int, burst: int | None = None, rule: str = "r", ident: int | str = 1) -> Bucket:
    interval = 60.0 / count
    return Bucket(rule, ident, interval, interval * (burst or count))


async def test_burst_then_refusal_with_retry_after(store: Store) -> None:
    bucket = per_minute(60, burst=5)
    verdicts = [(await store.hit([bucket]))[0] for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert [v.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    assert 0.9 < verdicts[5].retry_after <= 1.0  # one request a second comes back
    assert verdicts[4].reset_after == pytest.approx(5.0, abs=0.05)


async def test_refused_request_spends_nothing_anywhere(store: Store) -> None:
    tight, loose = per_minute(60, burst=1, rule="tight"), per_minute(60, burst=10, rule="loose")
    assert all(v.allowed for v in await store.hit([tight, loose]))
    second = await store.hit([tight, loose])
    assert [v.allowed for v in second] == [False, True]
    # the loose bucket was not charged for the refused request
    assert (await store.peek([loose]))[0].remaining == 8


async def test_peek_does_not_spend(store: Store) -> None:
    bucket = per_minute(60, burst=2)
    for _ in range(5):
        assert (await store.peek([bucket]))[0].remaining == 1
    assert (await store.hit([bucket]))[0].remaining == 1


async def test_keys_are_independent(store: Store) -> None:
    a, b = per_minute(60, 1, ident=1), per_minute(60, 1, ident=2)
    assert (await store.hit([a]))[0].allowed and (await store.hit([b]))[0].allowed
    assert not (await store.hit([a]))[0].allowed


async def test_bans_escalate_for_repeat_offenders(store: Store) -> None:
    first = await store.ban("198.51.100.7/32", "probe", 60)
    second = await store.ban("198.51.100.7/32", "probe", 60)
    assert second.until - first.until == pytest.approx(60, abs=2)  # 60 s, then 120 s from about now
    assert second.strikes == 2
    fixed = await store.ban("198.51.100.8/32", "operator", 30, escalate=False)
    assert fixed.strikes == 0
    assert {b.target for b in await store.bans()} == {"198.51.100.7/32", "198.51.100.8/32"}
    assert await store.unban("198.51.100.8/32") and not await store.unban("198.51.100.8/32")


async def test_levels_and_lists(store: Store) -> None:
    assert await store.get_level() is None
    for level in ("elevated", "under_attack"):
        await store.set_level({"mode": level, "level": level, "reason": "r"})
    assert (await store.get_level()) == {"mode": "under_attack", "level": "under_attack", "reason": "r"}
    assert [h["level"] for h in await store.level_history()] == ["under_attack", "elevated"]
    await store.set_list_entry({"list": "deny", "cidr": "203.0.113.0/24", "reason": "x"})
    assert await store.list_entries() == [{"list": "deny", "cidr": "203.0.113.0/24", "reason": "x"}]
    assert await store.remove_list_entry("deny", "203.0.113.0/24")
    assert await store.list_entries() == []


async def test_two_redis_clients_share_one_limit() -> None:
    """Two processes' worth of clients on one prefix: together they get the limit once, not twice."""
    prefix = f"fwtest-{secrets.token_hex(4)}:"
    one, two = redis_store(prefix), redis_store(prefix)
    try:
        bucket = per_minute(600, burst=100)
        results = await asyncio.gather(*[(one if i % 2 else two).hit([bucket]) for i in range(300)])
        allowed = sum(r[0].allowed for r in results)
        assert 100 <= allowed <= 102  # the burst, plus what refilled while the calls ran (10 a second)
        assert one.round_trips + two.round_trips == 300  # one round trip a decision
        assert one.fallbacks == two.fallbacks == 0
    finally:
        keys = [k async for k in one.client.scan_iter(f"{prefix}*")]
        if keys:
            await one.client.delete(*keys)
        await one.close()
        await two.close()


async def test_unreachable_redis_falls_back_to_local_limits() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.1)
    try:
        bucket = per_minute(60, burst=3)
        verdicts = [(await store.hit([bucket]))[0] for _ in range(4)]
        assert [v.allowed for v in verdicts] == [True, True, True, False]
        assert store.fallbacks == 4
    finally:
        await store.close()


async def test_unreachable_redis_holds_nothing() -> None:
    """A strike held in this process's fallback could not be given back to the right store (its release may
    come once Redis is back): none is held there, and the prompt is scored on its call's path instead."""
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.1)
    try:
        strikes, held = per_minute(60, burst=3, rule="s"), per_minute(60, burst=3, rule="s/held")
        limit, strike, hold = await store.hit([per_minute(60)], [strikes], [held])
        assert limit.allowed and strike.allowed and not hold.allowed
    finally:
        await store.close()


async def test_a_hold_given_back_while_redis_is_away_waits_for_it() -> None:
    """What is charged or refunded while Redis is away applies in this process, whose limits stand meanwhile
    (a sign-in's refund included); but a strike held in Redis and given back meanwhile waits for Redis, the only
    store that held it (forced here, it stayed held there for up to 30 minutes: an adversarial review)."""
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.1)
    try:
        spent, given = per_minute(60, burst=3, rule="spent"), per_minute(60, burst=3, rule="given")
        held = held_buckets([per_minute(60, burst=3, rule="strikes")])[0]
        store.local.force([given, given])
        store.charge_later([spent, given._replace(cost=-1.0), held._replace(cost=-1.0)])
        assert (await store.hit([per_minute(60, rule="other")]))[0].allowed  # falls back, taking them along
        assert list(store._pending) == [(held.rule, 1, held.interval, held.tolerance)]
        assert store.local.decide([spent, given], spend=False)[0].remaining == 1  # 3 - 1, less the one a peek asks
        assert store.local.decide([given], spend=False)[0].remaining == 1  # 2 spent, 1 given back
        await store.flush()  # fails at once, and stops: no loop of failures
        assert store._pending
    finally:
        store._pending.clear()
        await store.close()


async def test_a_hold_counts_at_least_the_strikes_spent(store: Store) -> None:
    """Strikes spent before the held count was kept (an upgrade), or a refund given twice, cannot leave the held
    bucket below its strike bucket: a hold starts from the later of the two."""
    strikes, held = per_minute(60, burst=4, rule="s"), per_minute(60, burst=4, rule="s/held")
    await store.charge([strikes._replace(cost=3.0)])  # three spent, none of them in the held count
    assert (await store.hit((), [strikes], [held]))[1].allowed  # the fourth
    assert not (await store.hit((), [strikes], [held]))[1].allowed  # no fifth


async def test_memory_store_stays_bounded() -> None:
    store = MemoryStore(max_keys=1000)
    for ident in range(5000):
        store.decide([per_minute(1, burst=1, ident=ident)])
    assert len(store) <= 1000


async def test_charge_and_refund_reconcile_an_estimate(store: Store) -> None:
    # a token budget of 600 a minute: an estimate of 500 is taken, 400 of it given back afterwards
    tokens = Bucket("tokens/account", 9, 0.1, 60.0, cost=500)
    assert (await store.hit([tokens]))[0].allowed
    assert not (await store.peek([tokens._replace(cost=200)]))[0].allowed
    await store.charge([tokens._replace(cost=-400)])
    assert (await store.peek([tokens._replace(cost=400)]))[0].allowed
    # a refund never makes a bucket fuller than full
    await store.charge([tokens._replace(cost=-10_000)])
    assert (await store.peek([tokens._replace(cost=600)]))[0].allowed
    assert not (await store.peek([tokens._replace(cost=601)]))[0].allowed


async def test_traffic_counts_are_summed_across_processes(store: Store) -> None:
    await store.add_traffic(1000, {"arrivals": 3, "req:page:2xx": 2})
    await store.add_traffic(1000, {"arrivals": 4, "event:login.failed": 1})
    await store.add_traffic(1001, {"arrivals": 1})
    assert await store.traffic(1000) == {"arrivals": 7, "req:page:2xx": 2, "event:login.failed": 1}
    assert await store.traffic(999) == {}


async def test_traffic_is_shared_by_two_redis_clients() -> None:
    prefix = f"fwtest-{secrets.token_hex(4)}:"
    first, second = redis_store(prefix), redis_store(prefix)
    try:
        await first.add_traffic(7, {"arrivals": 5})
        await second.add_traffic(7, {"arrivals": 6})
        assert (await first.traffic(7))["arrivals"] == 11
        assert 0 < await first.client.ttl(f"{prefix}traffic:7") <= 300  # kept a few minutes, then gone
        # one process at a time leads; the lease passes on when it is not renewed
        assert await first.lead("detector", "a", 0.3)
        assert not await second.lead("detector", "b", 0.3)
        assert await first.lead("detector", "a", 0.3)  # renewed
        await asyncio.sleep(0.4)
        assert await second.lead("detector", "b", 0.3)
    finally:
        keys = [k async for k in first.client.scan_iter(f"{prefix}*")]
        await first.client.delete(*keys)
        await first.close()
        await second.close()


async def test_memory_traffic_stays_bounded() -> None:
    store = MemoryStore()
    for second in range(1000):
        await store.add_traffic(second, {"arrivals": 1})
    assert await store.traffic(0) == {} and await store.traffic(999) == {"arrivals": 1}
    assert await store.lead("detector", "anyone", 1.0)


async def test_a_bad_stored_entry_does_not_stop_bans_and_lists_from_applying(store: Store) -> None:
    """An entry written by an older version, or by hand, that is not a network is skipped, not fatal."""
    import ipaddress

    from floodwall.edge.control import Control

    await store.ban("", "written by hand", 60.0)
    await store.ban("192.0.2.7", "scan", 60.0)
    await store.set_list_entry({"list": "deny", "cidr": "not a network", "reason": ""})
    control = Control(store)
    await control.refresh()
    assert control.healthy and control.banned(ipaddress.ip_address("192.0.2.7")) is not None


async def test_strikes_are_forgotten_after_a_day_in_memory() -> None:
    from floodwall.state.memory import STRIKE_MEMORY
    from tests.conftest import Clock

    clock = Clock()
    store = MemoryStore(clock=clock)
    for n in range(100):
        await store.ban(f"198.51.100.{n}", "probe", 60)
    clock.now += STRIKE_MEMORY + 1
    await store.bans()
    assert not store._strikes  # a wave of one-time offenders is not kept for ever
    assert (await store.ban("198.51.100.1", "probe", 60)).strikes == 1


async def test_buckets_peeked_with_a_hit_spend_nothing_and_refuse_nothing(store: Store) -> None:
    limit, strikes = per_minute(60, burst=2, rule="limit"), per_minute(60, burst=1, rule="strikes")
    await store.hit([strikes])  # the one strike spent: peeking it says "refused" from now on
    for _ in range(2):
        allowed, peeked = await store.hit([limit], peek=[strikes])
        assert allowed.allowed and not peeked.allowed  # a full peeked bucket has no say in the hit
    assert not (await store.hit([limit], peek=[strikes]))[0].allowed  # the hits were spent, the peeks not
    assert (await store.peek([strikes]))[0].remaining == 0


async def test_buckets_held_with_a_hit_are_spent_only_with_it_and_all_or_none(store: Store) -> None:
    """A strike held for a prompt (screening's Held): spent in the same round trip as the call's limits, where
    they allow, and only where every held bucket has room; a full one refuses the hold, not the call."""
    limit = per_minute(60, burst=3, rule="limit")
    strikes, held = per_minute(60, burst=2, rule="strikes"), per_minute(60, burst=2, rule="strikes/held")
    wide = per_minute(60, burst=5, rule="wide/held")
    found = await store.hit([limit], [strikes], [held, wide])
    assert [v.allowed for v in found] == [True, True, True, True]
    found = await store.hit([limit], [strikes], [held, wide])
    assert [v.allowed for v in found] == [True, True, True, True]
    found = await store.hit([limit], [strikes], [held, wide])  # held is full: no hold, the call goes on
    assert [v.allowed for v in found] == [True, True, False, True]
    assert (await store.peek([wide]))[0].remaining == 2  # 2 spent: not the third, whose hold failed
    assert not (await store.hit([limit], (), [wide]))[0].allowed  # the limit refuses: nothing held
    assert (await store.peek([wide]))[0].remaining == 2
    assert (await store.peek([strikes]))[0].remaining == 1  # peeked, never spent
    store.charge_later([held._replace(cost=-1.0)])  # a hold given back rides along with the next hit
    assert (await store.hit((), (), [held]))[0].allowed


async def test_charges_made_later_arrive_merged(store: Store) -> None:
    bucket = per_minute(60, burst=10)
    for _ in range(4):
        store.charge_later([bucket._replace(cost=2.0)])
    store.charge_later([bucket._replace(cost=-3.0)])  # a refund among them: 5 units in all
    if isinstance(store, RedisStore):
        rounds = store.round_trips
        other = per_minute(60, rule="other")
        assert (await store.hit([other]))[0].allowed  # the charges ride along with the next decision
        assert store.round_trips == rounds + 1 and not store._pending
    assert (await store.peek([bucket]))[0].remaining == 4  # 10 - 5 spent, less the one a peek asks about


async def test_charges_with_no_decision_to_ride_along_go_on_their_own() -> None:
    store = redis_store()
    try:
        bucket = per_minute(60, burst=10)
        store.charge_later([bucket._replace(cost=3.0)])
        rounds = store.round_trips
        await asyncio.sleep(store_module.CHARGE_DELAY + 0.3)
        assert store.round_trips == rounds + 1
        assert (await store.peek([bucket]))[0].remaining == 6
        store.charge_later([bucket._replace(cost=-3.0)])
    finally:
        await store.close()  # what waits is sent before the connection closes
    again = redis_store(store.prefix)
    try:
        assert (await again.peek([bucket]))[0].remaining == 9
    finally:
        keys = [k async for k in again.client.scan_iter(f"{again.prefix}*")]
        if keys:
            await again.client.delete(*keys)
        await again.close()


async def test_a_charge_made_later_is_seen_by_the_next_decision_of_its_bucket(store: Store) -> None:
    """A refund or a strike is seen by the very next decision, in both homes (in Redis it rides along with that
    decision and is applied before it)."""
    budget, strikes = per_minute(60, burst=2, rule="tokens"), per_minute(60, burst=1, rule="strikes")
    assert all(v.allowed for v in await store.hit([budget._replace(cost=2.0)]))
    store.charge_later([budget._replace(cost=-2.0)])  # the call used nothing: refunded
    assert (await store.hit([budget._replace(cost=2.0)]))[0].allowed
    store.charge_later([strikes])  # a flagged prompt's strike
    assert not (await store.hit([per_minute(60, rule="call")], peek=[strikes]))[1].allowed


async def cancelled_decision(store: RedisStore) -> None:
    """A decision cancelled while it waits for the store's one connection, taking the charges waiting along."""
    held = await store.pool.get_connection()  # the one connection busy: the decision waits for it
    decision = asyncio.ensure_future(store.hit([per_minute(60, rule="other")]))
    await asyncio.sleep(0.05)
    decision.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await decision
    await store.pool.release(held)


async def test_charges_taken_by_a_cancelled_decision_wait_again() -> None:
    store = redis_store(max_connections=1)
    try:
        bucket = per_minute(60, burst=5)
        store.charge_later([bucket._replace(cost=3.0)])
        await cancelled_decision(store)
        assert store._pending  # put back, not lost
        assert (await store.peek([bucket]))[0].remaining == 1  # 5 - 3, less the one a peek asks about
        # a refund is not put back: Redis may have applied it already, and one given twice would undo a charge
        # (a strike held: an adversarial review let 8 flagged prompts through where 7 strikes were left)
        store.charge_later([bucket._replace(cost=-1.0)])
        await cancelled_decision(store)
        assert not store._pending
    finally:
        keys = [k async for k in store.client.scan_iter(f"{store.prefix}*")]
        if keys:
            await store.client.delete(*keys)
        await store.close()


async def test_a_board_tells_each_process_what_the_others_published_lately(store: Store) -> None:
    """Replicas sharing one model server tell each other what they admit; one that stops drops out."""
    name = f"board-{secrets.token_hex(4)}"
    assert await store.share(name, "a", {"in_flight": 3}, 0.3) == []
    assert await store.share(name, "b", {"in_flight": 5, "demand": 7}, 0.3) == [{"in_flight": 3}]
    assert await store.share(name, "a", {"in_flight": 2}, 0.3) == [{"in_flight": 5, "demand": 7}]
    await asyncio.sleep(0.4)  # b has not published since
    assert await store.share(name, "a", {"in_flight": 1}, 0.3) == []
