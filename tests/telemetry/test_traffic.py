"""Traffic counting: per-second records, new addresses and networks, heavy hitters, all bounded."""

from __future__ import annotations

from floodwall.telemetry.sources import HeavyHitters, NewSources
from floodwall.telemetry.traffic import Traffic
from tests.conftest import Clock


def test_a_second_closes_into_flat_counts_that_join_the_totals() -> None:
    traffic = Traffic()
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.1.1"):
        traffic.arrived(address)
    traffic.answered("page", 200)
    traffic.answered("api-inference", 401)
    traffic.answered("api-inference", 503)
    traffic.refused("auth-login")
    traffic.event("login.failed", 2)
    closed = traffic.close_second(100)
    assert closed == {"arrivals": 4, "new_addresses": 3, "new_networks": 2, "sources": 3, "req:page:2xx": 1,
                      "req:api-inference:4xx": 1, "req:api-inference:5xx": 1, "req:auth-login:refused": 1,
                      "event:login.failed": 2}
    traffic.arrived("10.0.0.1")  # seen before: not new
    second = traffic.close_second(101)
    assert second == {"arrivals": 1, "sources": 1}
    assert traffic.totals["arrivals"] == 5 and traffic.totals["new_addresses"] == 3
    assert traffic.recent(60)["arrivals"] == 5


def test_new_sources_forget_after_two_generations_and_stay_bounded() -> None:
    clock = Clock()
    sources = NewSources(memory=10, limit=1000, clock=clock)
    assert sources.seen("192.0.2.1") == (True, True)
    assert sources.seen("192.0.2.2") == (True, False)  # same /24
    clock.now = 15  # one turn: still remembered, from the older generation
    assert sources.seen("192.0.2.1") == (False, False)
    clock.now = 40  # two turns without a visit from .2: forgotten
    sources.seen("198.51.100.1")
    clock.now = 55
    assert sources.seen("192.0.2.2") == (True, True)
    flood = NewSources(memory=1e9, limit=100)
    for n in range(10_000):
        flood.seen(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert flood.tracked <= 200
    assert NewSources().seen("2001:db8::1") == (True, True) and NewSources().seen("not an address")[0]


def test_heavy_hitters_find_the_flooders_in_bounded_memory() -> None:
    hitters = HeavyHitters(capacity=64)  # any key above 23,000 / 64 = 360 requests is kept
    for n in range(20_000):
        hitters.add(f"10.0.{n % 5000 // 250}.{n % 250}")  # 5,000 light clients, 4 requests each
        if n % 10 == 0:
            hitters.add("203.0.113.7")  # 2,000
        if n % 20 == 0:
            hitters.add("203.0.113.8")  # 1,000
    top = hitters.top(2)
    assert [t.key for t in top] == ["203.0.113.7", "203.0.113.8"]
    assert top[0].hits - top[0].error <= 2000 <= top[0].hits
    assert len(hitters.counts) <= 128


def test_top_talkers_are_per_window() -> None:
    clock = Clock()
    traffic = Traffic(talkers_window=60, clock=clock)
    for _ in range(5):
        traffic.arrived("192.0.2.9")
    traffic.arrived("192.0.2.10")
    assert traffic.top_talkers(1)[0].key == "192.0.2.9"  # the window in progress, before one has ended
    clock.now = 61
    traffic.close_second(1)
    traffic.arrived("192.0.2.10")
    assert [(t.key, t.hits) for t in traffic.top_talkers()] == [("192.0.2.9", 5), ("192.0.2.10", 1)]
