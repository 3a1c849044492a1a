"""Generation slots: N at once, a bounded FIFO queue, a slot handed on in order, cancelled waiters leave."""

from __future__ import annotations

import asyncio

import pytest

from floodwall.sim.slots import QueueFull, Slots


async def test_fifo_and_queue_limit() -> None:
    slots = Slots(1, 2)
    await slots.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await slots.acquire()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await slots.acquire()
    assert slots.queued == 2
    slots.release()
    await asyncio.sleep(0)
    slots.release()
    await asyncio.gather(*tasks)
    assert order == [1, 2] and slots.active == 1
    slots.release()
    assert slots.active == 0


@pytest.mark.parametrize("released_first", [False, True], ids=["waiter-runs-first", "release-runs-first"])
async def test_cancelled_waiter_frees_its_place(released_first: bool) -> None:
    """A waiter cancelled leaves the queue, whether it runs again before the next release or the release
    drops it first (it must still end cancelled, not with an error)."""
    slots = Slots(1, 1)
    await slots.acquire()
    task = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    task.cancel()
    if not released_first:
        await asyncio.sleep(0)
        assert slots.queued == 0
    slots.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.queued == 0 and slots.active == 0
