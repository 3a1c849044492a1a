"""Replicas before one model server: what the others admit (the Store's board), and this replica's part of the
limit they share."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Others:
    """What the other replicas sharing the model server admit, summed from their last figures (the Store's
    board): calls in flight, established calls in flight and waiting, and calls wanted (in flight and
    waiting)."""

    replicas: int = 0
    in_flight: int = 0
    established: int = 0
    established_waiting: int = 0
    demand: int = 0

    @classmethod
    def summed(cls, boards: list[dict[str, int]]) -> Others:
        def total(name: str) -> int:
            return sum(max(0, min(board.get(name, 0), 1_000_000)) for board in boards)  # what others say, bounded
        return cls(len(boards), total("in_flight"), total("established"), total("established_waiting"),
                   total("demand"))

    def part(self, limit: int, published: int, in_flight: int, queued: int, first: int) -> int:
        """A replica's part of the limit, with `in_flight` and `queued` calls (`first` of them established, in
        flight and waiting) and `published` in flight when it last told the others: what the others leave
        free, of which it claims at most its part (free slots / replicas) each round of the board, so that
        replicas a burst reaches at once do not each take them all; when all the replicas together want more
        than the limit, at most its fair share (at least one call), so none is starved: the established calls'
        share by what each replica's established callers want, then the rest by what the others want."""
        if not self.replicas:
            return limit
        free = limit - self.in_flight
        claim = published + math.ceil(max(0, free - published) / (1 + self.replicas))
        mine = in_flight + queued
        if mine + self.demand <= limit:
            return min(free, claim)
        others_first = self.established + self.established_waiting
        every_first = first + others_first
        if every_first >= limit:
            fair = limit * first / every_first
        else:
            rest, others_rest = mine - first, self.demand - others_first
            fair = first + (limit - every_first) * rest / max(1, rest + others_rest)
        # rounded up: the shares' remainders are used (the others' figures, read, bound what this one takes);
        # but never the slot each other replica with calls wanted is owed (at least one): else the replica that
        # wants most takes back each slot as it frees, and a small one is starved between its rounds
        owed = min(self.replicas, self.demand)
        return min(free, claim, max(1, math.ceil(fair)), max(1, limit - owed))
