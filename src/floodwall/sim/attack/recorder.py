"""Every request the simulator makes, by population and second, and the summaries the report gives."""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # seconds since the run started
    population: str
    ok: bool  # what this population counts as success (served for users; anything for attackers)
    status: int
    latency: float
    ttft: float | None = None
    reached_model: bool = False  # an inference call the model server answered


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(samples: Iterable[Sample]) -> dict[str, object]:
    rows = list(samples)
    served = [s.latency for s in rows if s.ok]
    ttfts = [s.ttft for s in rows if s.ok and s.ttft is not None]
    statuses = collections.Counter(str(s.status) for s in rows)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "requests": len(rows),
        "success_rate": round(len(served) / len(rows), 5) if rows else None,
        "latency_ms": {"p50": ms(percentile(served, 50)), "p95": ms(percentile(served, 95)),
                       "p99": ms(percentile(served, 99))},
        "ttft_ms": {"p50": ms(percentile(ttfts, 50)), "p95": ms(percentile(ttfts, 95))} if ttfts else None,
        "reached_model": sum(s.reached_model for s in rows),
        "statuses": dict(sorted(statuses.items())),
    }


class Recorder:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.samples: list[Sample] = []
        self.events: list[tuple[float, str, str]] = []  # (at, kind, detail): phases, levels, registration
        self.counters: collections.Counter[str] = collections.Counter()

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, population: str, ok: bool, status: int, latency: float, *, ttft: float | None = None,
            reached_model: bool = False, at: float | None = None) -> None:
        self.samples.append(Sample(self.now() if at is None else at, population, ok, status, latency, ttft,
                                   reached_model))

    def event(self, kind: str, detail: str) -> None:
        self.events.append((round(self.now(), 2), kind, detail))

    def between(self, population: str, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if s.population == population and start <= s.at < end]

    def populations(self) -> list[str]:
        return list(dict.fromkeys(s.population for s in self.samples))

    def series(self, population: str, seconds: int) -> dict[str, list[float | None]]:
        """Per second: success rate and p95 latency (ms) of the requests that ended in that second."""
        buckets: list[list[Sample]] = [[] for _ in range(seconds + 1)]
        for sample in self.samples:
            if sample.population == population and 0 <= int(sample.at) <= seconds:
                buckets[int(sample.at)].append(sample)
        success: list[float | None] = []
        p95: list[float | None] = []
        for bucket in buckets:
            success.append(sum(s.ok for s in bucket) / len(bucket) if bucket else None)
            value = percentile([s.latency for s in bucket if s.ok], 95)
            p95.append(None if value is None else value * 1000)
        return {"success_rate": success, "p95_ms": p95, "requests": [float(len(b)) for b in buckets]}
