"""What each component's status is: live, from the defense level, the registration mode and the traffic this
process served in the last minute; then the worst of that and what open incidents say. And the 90-day
uptime bars, from incidents (Statuspage's rule: a major outage counts in full, a partial one at 30%)."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from floodwall.levels import LEVELS
from floodwall.status.incidents import COMPONENT_STATUSES, COMPONENTS, KEPT_DAYS, Record

RANK = {status: rank for rank, status in enumerate(COMPONENT_STATUSES)}
_REGISTRATION = {
    "open": ("operational", "Sign-ups are open."),
    "queued": ("degraded_performance", "Sign-ups wait their turn in a queue: registration may be busy."),
    "limited": ("partial_outage", "Sign-ups are limited to a trickle: registration may be busy."),
    "closed": ("major_outage", "Sign-ups are paused for now. Registered users can log in normally."),
}
_OUTAGE_WEIGHT = {"major_outage": 1.0, "partial_outage": 0.3}


@dataclasses.dataclass(frozen=True)
class Component:
    key: str
    name: str
    status: str
    description: str


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=lambda status: RANK.get(status, 0), default="operational")


def live(level: str, registration: str, recent: Mapping[str, int]) -> dict[str, tuple[str, str]]:
    """Each component's status and why, from what this process sees now."""
    found = {key: ("operational", "") for key in COMPONENTS}
    found["registration"] = _REGISTRATION.get(registration, ("operational", ""))
    if level == LEVELS[-1]:  # under attack
        found["api"] = ("degraded_performance", "New and anonymous API clients are limited while we fend off an "
                                                "attack. Established accounts are served first.")
    calls = sum(recent.get(f"req:api-inference:{outcome}", 0) for outcome in ("2xx", "3xx", "4xx", "5xx"))
    shed = {key.rpartition(".")[2]: count for key, count in recent.items() if key.startswith("event:model.shed.")}
    failed = max(0, recent.get("req:api-inference:5xx", 0) - sum(shed.values()))
    if calls >= 5 and failed / calls > 0.5:
        found["model"] = ("major_outage", "The model server is not answering.")
    elif (calls >= 5 and failed / calls > 0.05) or shed.get("established"):
        found["model"] = ("partial_outage", "Some answers fail or are refused for lack of capacity.")
    elif any(shed.values()):
        found["model"] = ("degraded_performance", "The model is at capacity: newer accounts may be asked to wait.")
    return found


def components(level: str, registration: str, recent: Mapping[str, int],
               records: Sequence[Record]) -> list[Component]:
    seen = live(level, registration, recent)
    said: dict[str, list[str]] = collections.defaultdict(list)
    for record in records:
        if record.open:
            for key, status in record.components.items():
                said[key].append(status)
    return [Component(key, name, worst([seen[key][0], *said[key]]), seen[key][1]) for key, name in COMPONENTS.items()]


def uptime(records: Sequence[Record], key: str, now: dt.datetime,
           days: int = KEPT_DAYS) -> tuple[float, list[tuple[dt.date, str]]]:
    """The component's uptime over `days` (percent) and each day's worst status, oldest first."""
    first = (now - dt.timedelta(days=days - 1)).date()
    bars = {first + dt.timedelta(days=n): "operational" for n in range(days)}
    lost = 0.0
    start_of_window = dt.datetime.combine(first, dt.time(), dt.UTC)
    for record in records:
        status = record.components.get(key)
        if status is None or status == "operational":
            continue
        begin = max(record.created_at, start_of_window)
        end = record.resolved_at or now
        if end <= begin:
            continue
        lost += (end - begin).total_seconds() * _OUTAGE_WEIGHT.get(status, 0.0)
        day = begin.date()
        while day <= end.date():
            if day in bars:
                bars[day] = worst([bars[day], status])
            day += dt.timedelta(days=1)
    span = (now - start_of_window).total_seconds()
    return max(0.0, 100.0 * (1 - lost / span)) if span > 0 else 100.0, sorted(bars.items())
