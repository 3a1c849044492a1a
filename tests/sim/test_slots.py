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


async def test_cancelled_waiter_frees_its_place() -> None:
    slots = Slots(1, 1)
    await slots.acquire()
    task = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert slots.queued == 0
    slots.release()
    assert slots.active == 0


async def test_a_waiter_cancelled_just_before_a_release_leaves_quietly() -> None:
    slots = Slots(1, 1)
    await slots.acquire()
    task = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    task.cancel()
    slots.release()  # before the cancelled waiter runs again: it is dropped from the queue here
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.queued == 0 and slots.active == 0
