"""Replicas sharing admission through the Store's board, at its edges (found by review).

Real Admission objects on a real MemoryStore or a real Redis (127.0.0.1:6379), as test_admission.py does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from floodwall.inference.admission import Admission
from floodwall.inference.terms import AdmissionPolicy
from floodwall.state.memory import MemoryStore
from floodwall.state.redis import RedisStore
from tests.inference.test_admission import body, who
from tests.state.test_stores import REDIS, redis_store


def policy(limit: int, **more: Any) -> AdmissionPolicy:
    return AdmissionPolicy.from_data({"initial_limit": limit, "min_limit": limit, "max_limit": limit,
                                      "queue_size": 64, "reserve_half_life": 0.001, **more}, "test")


async def wipe(store: Any) -> None:
    if isinstance(store, RedisStore):
        keys = [k async for k in store.client.scan_iter(f"{store.prefix}*")]
        if keys:
            await store.client.delete(*keys)
    await store.close()


@pytest.mark.parametrize("shared", ["memory", "redis"])
async def test_a_burst_at_two_idle_replicas_stays_within_the_one_limit(shared: str) -> None:
    """Both replicas idle and aware of each other; a burst reaches both between two rounds of the board.
    Each sees the other's last figures (nothing in flight, nothing wanted): were each to take the whole
    limit, the model server would run twice its slots for as long as those (long) calls last. Each claims
    its part of the free slots a round."""
    store = MemoryStore() if shared == "memory" else redis_store()
    one, two = Admission(policy(4), store, lambda: "normal"), Admission(policy(4), store, lambda: "normal")
    one.start()
    two.start()
    try:
        await asyncio.sleep(0.6)  # the board goes round: each knows the other (idle)
        assert one.others.replicas == 1 and two.others.replicas == 1
        burst = [asyncio.create_task(a.admit(who(10 * i + n), "established", "normal", body()))
                 for i, a in enumerate((one, two)) for n in range(4)]
        await asyncio.sleep(0.01)
        admitted = sum(t.done() for t in burst)
        assert one.in_flight + two.in_flight <= 4, (
            f"{one.in_flight} + {two.in_flight} calls in flight at once against one limit of 4 ({admitted} admitted)")
    finally:
        await one.stop()
        await two.stop()
        for t in burst:
            t.cancel()
        await wipe(store)


async def test_a_board_that_cannot_be_read_once_does_not_make_a_replica_take_the_whole_limit() -> None:
    """The other replica holds every slot. One round trip to the board fails (here: the replica's pool of
    Redis connections is busy, as under a flood of decisions; a timeout does the same): the replica keeps
    the others' last figures, rather than admitting the whole limit again on top of theirs."""
    prefix = f"fwtest-review-{id(object())}:"
    holder = redis_store(prefix)
    flaky = RedisStore(f"{REDIS}?prefix={prefix}", timeout=0.05, max_connections=1)
    one, two = Admission(policy(4), holder, lambda: "normal"), Admission(policy(4), flaky, lambda: "normal")
    one.SHARE_EVERY = two.SHARE_EVERY = 0.05
    one.start()
    two.start()
    held = [await one.admit(who(n), "established", "normal", body()) for n in range(4)]
    extra: list[Any] = []
    try:
        await asyncio.sleep(0.3)
        assert two.others.in_flight == 4 and two.own_limit(two.limit) <= 0
        busy = await flaky.pool.get_connection()  # the only connection, busy elsewhere
        try:
            await asyncio.sleep(0.5)  # a round or two of the board fail
            for n in range(4):
                with contextlib.suppress(TimeoutError):  # a wait that times out: not admitted
                    extra.append(await asyncio.wait_for(two.admit(who(50 + n), "established", "normal", body()),
                                                        0.05))
        finally:
            await flaky.pool.release(busy)
        assert one.in_flight + two.in_flight <= 4, (
            f"with the board unread for one round, {one.in_flight} + {two.in_flight} calls in flight against 4")
    finally:
        for ticket in held:
            one.release(ticket)
        for ticket in extra:
            two.release(ticket)
        await one.stop()
        await two.stop()
        await flaky.close()
        await wipe(holder)



async def test_every_slot_is_used_when_two_replicas_want_more_than_an_odd_limit() -> None:
    """Limit 5, both replicas with established calls waiting: the fair share is 2.5 each; rounded down, one
    slot would stay idle for as long as both want more (up to N-1 of them with N replicas)."""
    store = MemoryStore()
    one, two = Admission(policy(5), store, lambda: "normal"), Admission(policy(5), store, lambda: "normal")
    one.SHARE_EVERY = two.SHARE_EVERY = 0.02
    one.start()
    two.start()
    waiting: list[asyncio.Task[Any]] = []
    try:
        await asyncio.sleep(0.05)
        first = [await one.admit(who(n), "established", "normal", body()) for n in range(3)]
        await asyncio.sleep(0.1)
        for n in range(2):
            await two.admit(who(100 + n), "established", "normal", body())
        await asyncio.sleep(0.1)
        assert one.in_flight + two.in_flight == 5
        for n in range(3):
            waiting.append(asyncio.create_task(one.admit(who(10 + n), "established", "normal", body())))
            waiting.append(asyncio.create_task(two.admit(who(110 + n), "established", "normal", body())))
        await asyncio.sleep(0.1)
        one.release(first.pop())  # one slot frees: someone should take it
        await asyncio.sleep(0.3)  # the board goes round many times
        assert one.queued and two.queued, "both still want more"
        assert one.in_flight + two.in_flight == 5, (
            f"{one.in_flight} + {two.in_flight} of 5 slots used while both replicas have calls waiting "
            f"(own limits {one.own_limit(5)}, {two.own_limit(5)})")
    finally:
        await one.stop()
        await two.stop()
        for t in waiting:
            t.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


async def test_the_share_loop_outlives_an_exception() -> None:
    """Anything that raises in a round of the board (here `_dispatch`, through the level) must not end the
    loop: frozen at "the other replica holds every slot", this replica would serve nothing for the rest of
    the process while the others, no longer hearing from it, take the whole limit between them."""
    store = MemoryStore()
    raised = {"once": True}

    def level() -> str:
        if raised["once"] and two.others.in_flight:
            raised["once"] = False
            raise RuntimeError("a level read fails once")
        return "normal"

    one, two = Admission(policy(2), store, lambda: "normal"), Admission(policy(2), store, level)
    one.SHARE_EVERY = two.SHARE_EVERY = 0.02
    one.start()
    two.start()
    held = [await one.admit(who(n), "established", "normal", body()) for n in range(2)]
    try:
        await asyncio.sleep(0.1)
        for ticket in held:
            one.release(ticket)
        await asyncio.sleep(0.2)
        assert two._sharing is not None and not two._sharing.done(), (
            f"the share loop died: {two._sharing.exception()!r}; others frozen at {two.others}, "
            f"own limit {two.own_limit(two.limit)}")
    finally:
        await one.stop()
        await two.stop()


async def test_a_replica_that_stops_leaves_the_board_at_once() -> None:
    """At shutdown `stop` takes the replica's row off the board: else the others would keep its calls in
    flight (all finished) out of their limit for SHARE_TTL (2 s)."""
    store = redis_store()
    one, two = Admission(policy(2), store, lambda: "normal"), Admission(policy(2), store, lambda: "normal")
    one.SHARE_EVERY = two.SHARE_EVERY = 0.02
    one.start()
    two.start()
    try:
        held = [await one.admit(who(n), "established", "normal", body()) for n in range(2)]
        await asyncio.sleep(0.1)
        for ticket in held:
            one.release(ticket)
        await one.stop()  # a graceful shutdown, its calls ended just before
        await asyncio.sleep(0.1)
        board = await store.client.hgetall(f"{store.prefix}share:admission")
        assert not any(json.loads(v.split(b" ", 1)[1]).get("in_flight") for v in board.values()) or \
            two.others.replicas == 0, f"the stopped replica is still on the board: {board}"
        assert two.others.replicas == 0, "the stopped replica still counts for up to 2 s"
    finally:
        await two.stop()
        await wipe(store)


async def test_the_saturation_gauge_counts_every_replica() -> None:
    """`gauges()` (the detector's model_saturation, /metrics) counts every replica's calls against the limit:
    two replicas sharing a saturated model server of 4 slots each report it saturated."""
    store = MemoryStore()
    one, two = Admission(policy(4), store, lambda: "normal"), Admission(policy(4), store, lambda: "normal")
    one.SHARE_EVERY = two.SHARE_EVERY = 0.02
    one.start()
    two.start()
    try:
        await asyncio.sleep(0.05)
        a = [await one.admit(who(n), "established", "normal", body()) for n in range(2)]
        await asyncio.sleep(0.05)
        b = [await two.admit(who(10 + n), "established", "normal", body()) for n in range(2)]
        await asyncio.sleep(0.05)
        assert one.total_in_flight == 4
        assert one.gauges()["model_saturation"] == 1.0, one.gauges()
    finally:
        for ticket in a:
            one.release(ticket)
        for ticket in b:
            two.release(ticket)
        await one.stop()
        await two.stop()
