"""Routes' refusals through the aggregating logs.RefusalLog, at its edges (found by review)."""

from __future__ import annotations

import asyncio
import ipaddress
from types import SimpleNamespace

import pytest

from floodwall import errors, logs


def test_a_refusal_of_its_own_reason_is_not_hidden_behind_a_flood_of_addresses(
        caplog: pytest.LogCaptureFixture) -> None:
    """An attacker with one IPv6 /64 sends wrong keys from 10,000 of its addresses within a window (the pairs
    are keyed by full address): the table is full. A refusal with another reason, from anyone, is still
    logged in full (the first of its reason) and counted in the summary's by_reason."""
    log = logs.RefusalLog(errors.log, window=0.05)
    net = ipaddress.ip_network("2001:db8:1:2::/64")

    async def flood() -> None:
        for n in range(log.max_pairs):
            log.record("invalid_api_key", str(net[n + 1]), 401, "api", "normal", "anonymous", "POST", "/v1/models")
        log.record("admin/bad-token", "198.51.100.7", 401, "admin", "normal", "anonymous", "POST", "/admin/bans")
        await asyncio.sleep(0.1)

    with caplog.at_level("INFO", logger="floodwall.errors"):
        asyncio.run(flood())
    full = [r.__dict__.get("reason") for r in caplog.records if r.getMessage() == "refused"]
    summary = [r.__dict__ for r in caplog.records if r.getMessage() == "refused_summary"]
    assert summary and summary[0]["pairs_not_listed"] == 1
    assert "admin/bad-token" in full or "admin/bad-token" in summary[0]["by_reason"], (
        f"the one admin refusal left no trace but pairs_not_listed=1 (by_reason {summary[0]['by_reason']})")


def test_routes_refusals_are_still_explained_after_an_event_loop_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    """errors.log_scope_refusal goes through one RefusalLog for the process. Its flush timer belongs to the
    loop of the first refusal; when that loop ends before the window does (a test's loop, a tool's
    asyncio.run, a TestClient's portal), the next refusal in another loop flushes the old window: else no
    summary would be written again, and once the counts reached max_pairs no refusal would be logged."""
    edge = SimpleNamespace(address="192.0.2.50", klass="api", level="normal", tier="anonymous")
    scope = {"type": "http", "method": "POST", "path": "/v1/models", "client": ("10.0.0.1", 1),
             "state": {"edge": edge}}
    wrong = errors.ApiError(401, "Invalid API key.", "invalid_api_key")

    async def refuse(times: int, wait: float = 0.0) -> None:
        for _ in range(times):
            errors.log_scope_refusal(scope, wrong)
        await asyncio.sleep(wait)

    asyncio.run(refuse(1))  # an earlier loop, gone before the window's end
    with caplog.at_level("INFO", logger="floodwall.errors"):
        window = errors._REFUSALS.window
        errors._REFUSALS.window = 0.05  # (a short window for the test: the same holds for 10 s)
        try:
            asyncio.run(refuse(5, wait=0.2))
        finally:
            errors._REFUSALS.window = window
            stuck, errors._REFUSALS._flusher = errors._REFUSALS._flusher, None  # leave the process's log usable
            errors._REFUSALS.counts.clear()
    messages = [r.getMessage() for r in caplog.records]
    assert stuck is None or "refused_summary" in messages, f"a flush timer of a closed loop still pending: {stuck}"
    assert "refused" in messages or "refused_summary" in messages, (
        f"5 refusals in a new loop left no line (pending timer of a closed loop: {errors._REFUSALS._flusher})")
