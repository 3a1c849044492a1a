"""What one simulated attack is asked to do, and its bounds: read by the command line before the
simulator's own dependencies (the `attack` extra) are imported."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

# established users are in every scenario; runner.ATTACKERS says which attackers each one sends
SCENARIOS = ("flood", "signup-bots", "flash-crowd", "stuffing", "probe", "jailbreak", "mixed")
MAX_DURATION = 3600.0
MAX_RATE = 20_000.0
MAX_SOURCES = 60_000


@dataclasses.dataclass
class Plan:
    scenario: str
    target: str
    duration: float = 30.0  # the attack itself
    calm: float = 10.0  # users alone before it: their baseline
    recovery: float = 15.0  # users after it
    sources: int = 5000
    rate: float = 1000.0
    users: int = 8
    keys: Sequence[str] = ()
    admin_token: str = ""
    forwarded_for: bool = False
    corpora: str | None = None
    model: str = "floodwall-simulated-chat"

    def check(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose from {', '.join(SCENARIOS)}")
        if self.duration <= 0 or self.calm < 0 or self.recovery < 0:
            raise ValueError("the attack needs a duration above 0, and calm and recovery of 0 or more")
        for name, value, top in (("duration", self.duration + self.calm + self.recovery, MAX_DURATION),
                                 ("rate", self.rate, MAX_RATE), ("sources", self.sources, MAX_SOURCES)):
            if not 0 < value <= top:
                raise ValueError(f"{name} must be above 0 and at most {top:g} (every run is bounded)")


def read_keys(path: str | None) -> list[str]:
    """Established users' API keys, one a line (accounts made before the attack, so the target counts
    them as established)."""
    if not path:
        return []
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


def admin_token(given: str | None) -> str:
    return given or os.environ.get("FLOODWALL_ADMIN_TOKEN", "")


def started_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
