"""The order prompts go to the scorer process in: those a call waits for first, then the others shared out
between their accounts by their work, so that one account's long prompts do not keep every other account's
strikes held (defense/scorer.py writes only a few milliseconds of work ahead, and these wait in the worker
meanwhile)."""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

T = TypeVar("T")


class Turns(Generic[T]):
    """Prompts waiting for the scorer process. `take` gives the oldest a call waits for (`urgent`), else the
    next by deficit round robin over the accounts: each account in turn may send QUANTUM characters' work a
    round (a prompt longer than that goes once its account has saved the turns for it), so an account asking
    for a few short prompts waits behind about one prompt of each other account, however long theirs. A
    prompt's work is its characters and OVERHEAD more (a prompt of none still costs the process a turn). After
    URGENT_RUN prompts a call waits for in a row, one of the others goes: a steady stream of the first cannot
    keep the others waiting for good (an adversarial review: an aside waited out a 2.5 s flood of them)."""

    QUANTUM = 4096  # characters' work an account sends a round: some 0.8 ms of the process's
    OVERHEAD = 200  # characters' worth of a prompt's fixed cost (the pipe, the featurizer's numpy calls)
    URGENT_RUN = 4

    def __init__(self) -> None:
        self._urgent: collections.deque[tuple[T, int]] = collections.deque()
        # by account, its prompts in the order they came; the dict's order is the round's
        self._accounts: dict[object, collections.deque[tuple[T, int]]] = {}
        self._credit: dict[object, int] = {}
        self._count = 0
        self._run = 0  # prompts a call waits for taken in a row while others waited
        self.characters = 0  # of every prompt waiting
        self.urgent_characters = 0

    def __len__(self) -> int:
        return self._count

    def put(self, item: T, size: int, account: object = None, urgent: bool = False) -> None:
        """`size`: the prompt's characters (its work), `account`: whose it is (prompts of no account share one
        turn)."""
        self.characters += size
        self._count += 1
        if urgent:
            self._urgent.append((item, size))
            self.urgent_characters += size
            return
        queue = self._accounts.get(account)
        if queue is None:
            queue = self._accounts[account] = collections.deque()
            self._credit[account] = 0
        queue.append((item, size))

    def take(self) -> T | None:
        if self._urgent and (self._run < self.URGENT_RUN or not self._accounts):
            item, size = self._urgent.popleft()
            self._run = self._run + 1 if self._accounts else 0
            self.urgent_characters -= size
            self.characters -= size
            self._count -= 1
            return item
        self._run = 0
        accounts, credit = self._accounts, self._credit
        while accounts:
            account = next(iter(accounts))
            queue = accounts[account]
            item, size = queue[0]
            cost = size + self.OVERHEAD
            if credit[account] < cost:
                credit[account] += self.QUANTUM
                accounts[account] = accounts.pop(account)  # to the round's end
                continue
            queue.popleft()
            credit[account] -= cost
            if not queue:  # (an account that has nothing waiting saves no turns)
                del accounts[account], credit[account]
            self.characters -= size
            self._count -= 1
            return item
        return None

    def clear(self) -> list[T]:
        """Every prompt waiting, taken out (urgent first, then by account)."""
        items = [item for item, _ in self._urgent]
        items += [item for queue in self._accounts.values() for item, _ in queue]
        self._urgent.clear()
        self._accounts.clear()
        self._credit.clear()
        self._count = self._run = self.characters = self.urgent_characters = 0
        return items
