"""The order prompts go to the scorer process in: those a call waits for first, then the others shared out
between their accounts by characters, so that one account's long prompts do not keep every other account's
strikes held (defense/scorer.py sends only a few at a time, and these wait in the worker meanwhile)."""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

T = TypeVar("T")


class Turns(Generic[T]):
    """Prompts waiting for the scorer process. `take` gives the oldest a call waits for (`urgent`), else the
    next by deficit round robin over the accounts: each account in turn may send QUANTUM characters a round
    (a prompt longer than that goes once its account has saved the turns for it), so an account asking for
    a few short prompts waits behind about one prompt of each other account, however long theirs."""

    QUANTUM = 4096  # characters an account sends a round: some 0.8 ms of the process's work

    def __init__(self) -> None:
        self._urgent: collections.deque[tuple[T, int]] = collections.deque()
        # by account, its prompts in the order they came; the dict's order is the round's
        self._accounts: dict[object, collections.deque[tuple[T, int]]] = {}
        self._credit: dict[object, int] = {}
        self.characters = 0  # of every prompt waiting
        self.urgent_characters = 0

    def __len__(self) -> int:
        return len(self._urgent) + sum(map(len, self._accounts.values()))

    def __bool__(self) -> bool:
        return bool(self._urgent or self._accounts)  # (an account is kept only while it has one waiting)

    def put(self, item: T, size: int, account: object = None, urgent: bool = False) -> None:
        """`size`: the prompt's characters (its work), `account`: whose it is (prompts of no account share one
        turn)."""
        self.characters += size
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
        if self._urgent:
            item, size = self._urgent.popleft()
            self.urgent_characters -= size
            self.characters -= size
            return item
        accounts, credit = self._accounts, self._credit
        while accounts:
            account = next(iter(accounts))
            queue = accounts[account]
            item, size = queue[0]
            if credit[account] < size:
                credit[account] += self.QUANTUM
                accounts[account] = accounts.pop(account)  # to the round's end
                continue
            queue.popleft()
            credit[account] -= size
            if not queue:  # (an account that has nothing waiting saves no turns)
                del accounts[account], credit[account]
            self.characters -= size
            return item
        return None

    def clear(self) -> list[T]:
        """Every prompt waiting, taken out (urgent first, then by account)."""
        items = [item for item, _ in self._urgent]
        items += [item for queue in self._accounts.values() for item, _ in queue]
        self._urgent.clear()
        self._accounts.clear()
        self._credit.clear()
        self.characters = self.urgent_characters = 0
        return items
