"""Where each account's flagged conversations have got to, so that a flagged message a conversation sends again
with every turn spends one prompt strike, not one a turn.

A chat client sends the whole history with every call. A message the screening flags (an attack, or a benign
one it got wrong) is then flagged again each turn, and would run the account out of strikes within a dozen
turns. A flagged call that goes on from where a charged one stopped (its messages begin with all of that
call's, and more follow), and whose new messages pass on their own, is that conversation going on. Anything
else is another attempt and spends its strike: the same prompt again, a branch (a second call going on from
the same point: another payload after one jailbreak), or a history the client put together anew.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence


class Conversations:
    """Per account, the last call of each of its charged conversations, as one hash of its messages in order.
    Bounded: HEADS conversations an account (the oldest forgotten first), ACCOUNTS accounts, PARTS messages
    read a call (a longer one is another attempt), FRESH characters of new messages scored again on the
    event loop (more is another attempt), each conversation kept TTL seconds after its last call."""

    HEADS, ACCOUNTS, PARTS, FRESH, TTL = 8, 10_000, 1024, 4096, 3600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heads: collections.OrderedDict[int, dict[int, float]] = collections.OrderedDict()

    def chain(self, parts: Sequence[str]) -> list[int] | None:
        """The hash of each leading run of the messages (the first one, two, ... all), or None past PARTS."""
        if len(parts) > self.PARTS:
            return None
        hashes, running = [], 0
        for part in parts:
            running = hash((running, part))
            hashes.append(running)
        return hashes

    def went_on(self, account: int, chain: Sequence[int]) -> int | None:
        """How many of the call's messages were a charged conversation's last call (the longest such run, short
        of them all: the call goes on from there), or None when it goes on from none."""
        heads = self._heads.get(account)
        if not heads:
            return None
        now = self.clock()
        for count in range(len(chain) - 1, 0, -1):
            until = heads.get(chain[count - 1])
            if until is not None and until >= now:
                return count
        return None

    def charged(self, account: int, chain: Sequence[int], went_on: int | None = None) -> None:
        """The call `chain` is a charged conversation's last; `went_on`: it went on from the one whose last call
        had that many of its messages, which it replaces (a second call from the same point is a branch)."""
        heads = self._heads.pop(account, None) or {}
        if went_on is not None:
            heads.pop(chain[went_on - 1], None)
        heads.pop(chain[-1], None)
        heads[chain[-1]] = self.clock() + self.TTL
        if len(heads) > self.HEADS:
            del heads[next(iter(heads))]  # (one over at most: a dict of nine)
        self._heads[account] = heads  # last: the account least lately charged goes first
        if len(self._heads) > self.ACCOUNTS:
            self._heads.popitem(last=False)
