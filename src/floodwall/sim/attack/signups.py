"""The sign-up populations: scripted registrations (signup-bots) and real people arriving at once
(flash-crowd), who wait in the queue and solve the challenges as a browser would."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from floodwall.sim.attack import corpus
from floodwall.sim.attack.populations import Attacker, Context, Population
from floodwall.sim.attack.recorder import percentile
from floodwall.sim.attack.traffic import Client, solve_challenge, widget_solution


class SignupBots(Attacker):
    """Scripted registrations: disposable domains, weak passwords, many addresses, no patience."""

    name = "signup-bots"

    def __init__(self, ctx: Context, rate: float = 20.0, sources: int = 1000) -> None:
        super().__init__(ctx, rate, sources)
        self.attempts = 0
        self.created = 0
        self.solved = 0
        self.pow_cpu_s = 0.0

    async def one(self) -> None:
        client = self.ctx.client(next(self.turn))
        rng = self.ctx.rng
        # half the bots use throwaway domains and common passwords; the other half have learnt not to
        # (addresses at reserved example domains: nothing the target sends can reach anyone)
        if rng.random() < 0.5:
            email = f"{secrets.token_hex(5)}@{rng.choice(self.ctx.corpora.disposable_domains)}"
            password = rng.choice(self.ctx.corpora.common_passwords)
        else:
            email = f"{corpus.person_name(rng.randrange(10**6))}@mail{rng.randrange(100)}.example.com"
            password = secrets.token_urlsafe(12)
        self.attempts += 1
        body: dict[str, Any] = {"email": email, "password": password}
        reply = await client.call("POST", "/auth/register", body)
        if reply.code == "challenge_required" and rng.random() < 0.5:
            # the careful half pays the proof of work and tries again; the rest move on
            body["altcha"], seconds = await solve_challenge(reply.challenge)
            self.solved += 1
            self.pow_cpu_s += seconds
            self.record(reply)
            reply = await client.call("POST", "/auth/register", body)
        await client.close()
        self.ctx.note_registration(reply)
        if 200 <= reply.status < 300:
            self.created += 1
        self.record(reply)

    def outcomes(self) -> dict[str, Any]:
        share = round(self.created / self.attempts, 5) if self.attempts else None
        return {"bot_signup_attempts": self.attempts, "bot_accounts_created": self.created,
                "bot_accounts_created_share": share, "bot_challenges_solved": self.solved,
                "bot_pow_cpu_s": round(self.pow_cpu_s, 2)}


class FlashCrowd(Population):
    """Real people arriving at once to sign up: each waits as told (Retry-After) and tries again."""

    name = "flash-crowd"
    attacker = False

    def __init__(self, ctx: Context, people: int = 200, patience: float = 120.0) -> None:
        super().__init__(ctx)
        self.people = people
        self.patience = patience
        self.addresses = ctx.sources.take(people, own_networks=True)
        self.registered = 0
        self.waits: list[float] = []

    async def run(self, until: float) -> None:
        start = self.ctx.recorder.now()
        spread = max(1.0, (until - start) / 2)  # they arrive over the first half of the attack
        await asyncio.gather(*(self._person(i, source, start + spread * i / self.people, until)
                               for i, source in enumerate(self.addresses)))

    def outcomes(self) -> dict[str, Any]:
        def at(q: float) -> float | None:
            value = percentile(self.waits, q)
            return None if value is None else round(value, 2)

        return {"flash_crowd_people": self.people, "flash_crowd_registered": self.registered,
                "flash_crowd_wait_s": {"p50": at(50), "p95": at(95), "max": at(100)}}

    async def _person(self, index: int, source: str, arrive: float, until: float) -> None:
        recorder = self.ctx.recorder
        await asyncio.sleep(max(0.0, arrive - recorder.now()))
        client = self.ctx.client(source)
        first_try = recorder.now()
        email = f"{corpus.person_name(index)}@example.org"
        password = secrets.token_urlsafe(12)
        ticket: str | None = None
        body: dict[str, Any] = {"email": email, "password": password}

        async def get(path: str) -> bytes:
            return (await client.call("GET", path)).body

        if solution := await widget_solution(get):
            body["altcha"] = solution
        while recorder.now() - first_try < self.patience and recorder.now() < until:
            if ticket:
                body["ticket"] = ticket
            reply = await client.call("POST", "/auth/register", body)
            self.ctx.note_registration(reply)
            self.record(reply)
            if 200 <= reply.status < 300 or reply.code == "email_taken":
                self.registered += 1
                self.waits.append(recorder.now() - first_try)
                break
            if reply.code == "challenge_required":  # the page's widget solves it, then the form goes again
                body["altcha"], _ = await solve_challenge(reply.challenge)
                continue
            if reply.status not in (0, 429, 503):
                break  # refused for good (a 4xx about the request): a person gives up
            wait = float(reply.headers.get("retry-after") or 5)
            ticket = reply.queue.get("ticket") or ticket
            if ticket:  # in the waiting room: watch the queue (as its page does) until the turn comes
                wait = await self._wait_in_queue(client, ticket, first_try, until)
            await asyncio.sleep(min(30.0, wait) * self.ctx.rng.uniform(1.0, 1.5))
        await client.close()

    async def _wait_in_queue(self, client: Client, ticket: str, first_try: float, until: float) -> float:
        """Poll the waiting room until this ticket's turn; the pause before signing up (none when it came)."""
        recorder = self.ctx.recorder
        while recorder.now() - first_try < self.patience and recorder.now() < until:
            reply = await client.call("GET", f"/auth/queue?ticket={ticket}")
            place = reply.queue
            if not place:
                return float(reply.headers.get("retry-after") or 5)
            if place.get("position") == 0:
                return 0.0
            await asyncio.sleep(max(2.0, min(30.0, float(place.get("eta_seconds") or 5) / 4)))
        return 0.0
