"""The sign-up waiting room (registration mode `queued`): fair first-come admission at the policy's pace.

A visitor's place is a signed ticket holding its number and a binding to the client (its network and
browser); the server keeps nothing per visitor, only two counters in the Store: the numbers issued, and
the frontier, which advances at the queue's pace. A number at or below the frontier may sign up, once,
while the frontier has not moved `use_within` past it. A ticket cannot be forged (signed), moved to
another client (bound), used twice (a single-use bucket) or used to jump ahead (the number is the server's).
"""

from __future__ import annotations

import dataclasses
import math

from floodwall.accounts.activity import Client
from floodwall.db.signing import Signer
from floodwall.identity import Networks
from floodwall.limits import Limit
from floodwall.state.store import Store, once, use_once

TICKET_COOKIE = "fw_ticket"
QUEUE = "registration"
USED = "registration/ticket"


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    ticket: str
    number: int
    position: int  # how many are still ahead (0: its turn has come)
    eta_seconds: int

    @property
    def admitted(self) -> bool:
        return self.position == 0

    def json(self) -> dict[str, object]:
        return {"ticket": self.ticket, "position": self.position, "eta_seconds": self.eta_seconds}


def client_binding(signer: Signer, client: Client, networks: Networks) -> str:
    """What ties a ticket or a challenge to the client it was given to: its network (a phone moving between
    addresses of one carrier keeps it) and its browser."""
    _, network = networks.text_keys(client.ip)
    return signer.mac("client-binding", f"{network}|{client.user_agent}")[:16]


class WaitingRoom:
    def __init__(self, store: Store, signer: Signer, pace: Limit, use_within: float = 600.0,
                 lifetime: float = 6 * 3600.0, networks: Networks | None = None) -> None:
        self.store = store
        self.networks = networks or Networks()
        self.signer = signer
        self.rate = pace.count / pace.period
        self.burst = float(pace.burst)
        self.use_within = use_within
        self.lifetime = lifetime

    async def place(self, ticket: str | None, client: Client, join: bool) -> Place | None:
        """The client's place in the queue: its ticket's when the ticket is good, else (with `join`) a new number
        at the back."""
        payload = self.signer.loads("ticket", ticket or "", max_age=int(self.lifetime))
        binding = client_binding(self.signer, client, self.networks)
        if isinstance(payload, dict) and payload.get("b") == binding and isinstance(payload.get("n"), int):
            number = payload["n"]
            _, frontier = await self.store.queue(QUEUE, self.rate, self.burst, join=False)
            # its turn came and went (the frontier moved on by `use_within` of admissions): back of the queue
            if number >= frontier - self.rate * self.use_within:
                return self._place(ticket or "", number, frontier)
        if not join:
            return None
        number, frontier = await self.store.queue(QUEUE, self.rate, self.burst, join=True)
        return self._place(self.signer.dumps("ticket", {"n": number, "b": binding}), number, frontier)

    def _place(self, ticket: str, number: int, frontier: float) -> Place:
        ahead = max(0, math.ceil(number - frontier))
        return Place(ticket, number, ahead, math.ceil(ahead / self.rate) if ahead else 0)

    async def figures(self) -> dict[str, float]:
        """The queue as operators see it: numbers issued, the frontier, and how many wait behind it."""
        issued, frontier = await self.store.queue(QUEUE, self.rate, self.burst, join=False)
        return {"issued": issued, "frontier": round(frontier, 1), "waiting": max(0, math.ceil(issued - frontier)),
                "per_minute": round(self.rate * 60, 1)}

    async def use(self, place: Place) -> bool:
        """Spend an admitted ticket; False when it was spent already."""
        return await use_once(self.store, USED, place.number, self.lifetime)

    async def give_back(self, place: Place) -> None:
        """The sign-up failed on its own terms (a taken e-mail, a weak password): the ticket stays good."""
        await self.store.charge([once(USED, place.number, self.lifetime, -1.0)])
