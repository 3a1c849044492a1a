"""One simulated attack: set up, a calm phase (the users' baseline), the attack, a recovery phase; the
service's defense level watched throughout; then the report."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from floodwall.sim.attack import corpus
from floodwall.sim.attack.plan import Plan
from floodwall.sim.attack.populations import Context, Established, Flood, Jailbreak, Population, Probe, Stuffing
from floodwall.sim.attack.recorder import Recorder
from floodwall.sim.attack.signups import FlashCrowd, SignupBots
from floodwall.sim.attack.traffic import Sources, Target, raise_open_files_limit

# which attackers each scenario sends (plan.SCENARIOS names them); established users are in every one
ATTACKERS: dict[str, tuple[Callable[[Context], Population], ...]] = {
    "flood": (Flood,),
    "signup-bots": (SignupBots,),
    "flash-crowd": (FlashCrowd,),
    "stuffing": (Stuffing,),
    "probe": (Probe,),
    "jailbreak": (Jailbreak,),
    "mixed": (Flood, SignupBots, FlashCrowd, Stuffing, Probe, Jailbreak),
}


class Run:
    def __init__(self, plan: Plan, on_tick: Callable[[Run], None] | None = None) -> None:
        plan.check()
        self.plan = plan
        self.recorder = Recorder()
        self.target = Target.parse(plan.target)
        self.ctx = Context(self.target, self.recorder, Sources(), corpus.Corpora.load(plan.corpora),
                           forwarded_for=plan.forwarded_for, admin_token=plan.admin_token, rate=plan.rate,
                           flood_sources=plan.sources,
                           model=plan.model)
        self.users = Established(self.ctx, plan.keys, plan.users)
        self.attackers = [make(self.ctx) for make in ATTACKERS[plan.scenario]]
        self.on_tick = on_tick
        self.level = "unknown"
        self.phase = "setup"
        self.attack_window = (plan.calm, plan.calm + plan.duration)
        self.end = plan.calm + plan.duration + plan.recovery

    async def execute(self) -> dict[str, Any]:
        raise_open_files_limit(self.plan.sources + 10_000)
        await asyncio.gather(self.users.setup(), *(a.setup() for a in self.attackers))
        self.recorder = self.ctx.recorder = Recorder()  # the clock starts when set-up is done
        watcher = asyncio.create_task(self._watch())
        try:
            users = asyncio.create_task(self.users.run(self.end))
            self._phase("calm")
            await asyncio.sleep(self.plan.calm)
            self._phase("attack")
            # attackers stop when the attack does; people (a flash crowd) keep trying through the recovery
            tasks = [asyncio.create_task(a.run(self.attack_window[1] if a.attacker else self.end))
                     for a in self.attackers]
            await asyncio.sleep(max(0.0, self.attack_window[1] - self.recorder.now()))
            self._phase("recovery")
            await asyncio.gather(users, *tasks)
        finally:
            watcher.cancel()
        self._phase("done")
        from floodwall.sim.attack.report import build

        return build(self)

    def _phase(self, name: str) -> None:
        self.phase = name
        self.recorder.event("phase", name)

    async def _watch(self) -> None:
        """The defense level each second (admin API), and the live view."""
        headers = {"authorization": f"Bearer {self.plan.admin_token}"} if self.plan.admin_token else {}
        async with httpx.AsyncClient(base_url=self.target.url, timeout=2, headers=headers) as web:
            while True:
                level = await self._level(web) if self.plan.admin_token else "unknown"
                if level != self.level:
                    self.level = level
                    self.recorder.event("level", level)
                if self.on_tick is not None:
                    self.on_tick(self)
                await asyncio.sleep(1.0)

    async def _level(self, web: httpx.AsyncClient) -> str:
        try:
            reply = await web.get("/admin/api/level")
            if reply.status_code == 200:
                return str(reply.json().get("level", "unknown"))
        except (httpx.HTTPError, ValueError):
            pass
        return "unknown"

