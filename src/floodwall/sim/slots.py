"""Generation slots with a bounded FIFO queue, as vLLM and Ollama schedule: N generate, Q wait, the rest get 503."""

from __future__ import annotations

import asyncio
import collections
import contextlib


class QueueFull(Exception):
    pass


class Slots:
    def __init__(self, slots: int, queue_size: int) -> None:
        self.slots = slots
        self.queue_size = queue_size
        self.active = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> None:
        if self.active < self.slots and not self._waiting:
            self.active += 1
            return
        if len(self._waiting) >= self.queue_size:
            raise QueueFull
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # the slot was handed over just as this waiter was cancelled: pass it on
                self.release()
            else:
                # a release between the cancel and this line has already dropped it from the queue
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the next in line; active stays the same
                return
        self.active -= 1
