"""The detector in a running floodwall, over real HTTP: a flood of failing calls moves the level by itself
(auto), the record says why, /metrics shows it, and the level comes back down when the flood stops.
Once with the state in memory, once in the real Redis (where replicas' traffic is summed)."""

from __future__ import annotations

import collections
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import floodwall_process

TOKEN = "admin-" + secrets.token_hex(16)
# the default rules' shape, scaled down to what a test can send, and a detector that decides quickly
POLICY = """
[detector]
warmup = 2
hold = 2
cooldown = "2s"
[[detector.rule]]
name = "flood"
level = "under_attack"
when = ["requests > 10x baseline", "requests > 40", "error_share > 0.5"]
"""


@pytest.fixture(scope="module", params=["memory", "redis"])
def watched(request: pytest.FixtureRequest, model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("watch")
    (tmp / "policy.toml").write_text(POLICY)
    state = "memory://" if request.param == "memory" else \
        f"redis://127.0.0.1:6379/0?prefix=fwtest-{secrets.token_hex(4)}:"
    env = {"FLOODWALL_EDGE_POLICY": str(tmp / "policy.toml"), "FLOODWALL_STATE_URL": state,
           "FLOODWALL_DEFENSE_LEVEL": "auto", "FLOODWALL_ADMIN_TOKEN": TOKEN,
           "FLOODWALL_SERVER_TRUSTED_PROXIES": "127.0.0.2/32"}
    with floodwall_process(tmp, f"sqlite:///{tmp / 'floodwall.db'}", model_url, env=env) as url:
        yield url


def level(base_url: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{base_url}/admin/api/level", headers={"authorization": f"Bearer {TOKEN}"},
                                      timeout=10).json()
    return found


def wait_for(base_url: str, wanted: str, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if level(base_url)["level"] == wanted:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"the level did not reach {wanted} within {within}s: {level(base_url)}")


def flood(base_url: str, stop: threading.Event, tally: collections.Counter[str] | None = None) -> None:
    """Calls without a key, as fast as one connection goes: each answered 401. A connection the server
    closed as a request went out is counted (in `tally`) and the flood goes on, as a flooder's would."""
    with httpx.Client(base_url=base_url, timeout=10,
                      transport=httpx.HTTPTransport(local_address="127.3.0.1")) as client:
        while not stop.is_set():
            try:
                client.post("/v1/chat/completions", json={"model": "m", "messages": []})
                outcome = "answered"
            except httpx.RemoteProtocolError:
                outcome = "dropped"
            if tally is not None:
                tally[outcome] += 1


def test_a_flood_moves_the_level_and_it_comes_back(watched: str) -> None:
    time.sleep(3)  # the warm-up: calm seconds to learn from
    assert level(watched)["level"] == "normal"
    stop = threading.Event()
    flooder = threading.Thread(target=flood, args=(watched, stop))
    flooder.start()
    try:
        took = wait_for(watched, "under_attack", within=15)
        record = level(watched)
        assert record["by"] == "detector" and record["mode"] == "auto"
        assert record["reason"].startswith("flood: requests") and "error_share" in record["reason"]
        metrics = httpx.get(f"{watched}/metrics", timeout=10).text  # from this machine: no token needed
        assert 'floodwall_defense_level{level="under_attack"} 1.0' in metrics
        assert 'floodwall_detector_rule_active{level="under_attack",rule="flood"} 1.0' in metrics
        assert 'floodwall_requests_total{class="api-inference",outcome="4xx"}' in metrics
    finally:
        stop.set()
        flooder.join()
    assert took < 10
    wait_for(watched, "normal", within=20)  # two steps down, each after 2 quiet seconds
    history = [entry["level"] for entry in level(watched)["history"]]
    assert history[:3] == ["normal", "elevated", "under_attack"]


def test_the_detector_and_traffic_figures_for_operators(watched: str) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    detector = httpx.get(f"{watched}/admin/api/detector", headers=headers, timeout=10).json()
    assert detector["rules"][0]["name"] == "flood" and detector["leading"] is True
    assert "requests" in detector["figures"] and "requests" in detector["baselines"]
    traffic = httpx.get(f"{watched}/admin/api/traffic", headers=headers, timeout=10).json()
    assert traffic["arrivals"] > 0 and traffic["top_talkers"][0]["key"].startswith("127.")
    assert traffic["requests"]["admin"]["2xx"] >= 1


def test_metrics_need_the_admin_token_from_elsewhere(watched: str) -> None:
    elsewhere = {"x-forwarded-for": "198.51.100.7"}  # through the trusted proxy, from another machine
    with httpx.Client(base_url=watched, timeout=10,
                      transport=httpx.HTTPTransport(local_address="127.0.0.2")) as proxy:
        refused = proxy.get("/metrics", headers=elsewhere)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_admin_token"
        allowed = proxy.get("/metrics", headers={**elsewhere, "authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and allowed.headers["content-type"].startswith("text/plain")
        assert "# TYPE floodwall_arrivals_total counter" in allowed.text
        # what a soak watches: the process's memory and files, and the tasks on its loop
        assert "process_resident_memory_bytes" in allowed.text and "process_open_fds" in allowed.text
        assert "floodwall_asyncio_tasks " in allowed.text
        # and what each bounded memory holds, so that a growth of the first can be read part by part
        held = dict(re.findall(r'^floodwall_held_entries\{part="(\w+)"\} (\S+)$', allowed.text, re.M))
        assert {"api_keys", "sessions", "campaign_signatures", "usage_rows_pending", "parsed_addresses",
                "recent_refusals", "scoring_answers"} <= set(held)
        assert float(held["parsed_addresses"]) >= 1


def test_the_detector_command(watched: str) -> None:
    shown = subprocess.run([sys.executable, "-m", "floodwall", "detector", "--url", watched], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "FLOODWALL_ADMIN_TOKEN": TOKEN})
    assert shown.returncode == 0, shown.stderr
    assert "rules on:" in shown.stdout and "rule flood -> under_attack: requests > 10x baseline" in shown.stdout
    assert "heaviest talkers:" in shown.stdout and "127." in shown.stdout


def test_two_replicas_read_the_whole_service_and_one_leads(model_url: str,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two floodwall processes sharing Redis: a flood at one of them moves the level for both, the detector
    of each reads both processes' traffic summed, and exactly one of them leads."""
    tmp: Path = tmp_path_factory.mktemp("replicas")
    (tmp / "policy.toml").write_text(POLICY)
    env = {"FLOODWALL_EDGE_POLICY": str(tmp / "policy.toml"), "FLOODWALL_DEFENSE_LEVEL": "auto",
           "FLOODWALL_STATE_URL": f"redis://127.0.0.1:6379/0?prefix=fwtest-{secrets.token_hex(4)}:",
           "FLOODWALL_ADMIN_TOKEN": TOKEN}
    database = f"sqlite:///{tmp / 'floodwall.db'}"
    with floodwall_process(tmp, database, model_url, env=env) as first, \
            floodwall_process(tmp, database, model_url, env=env) as second:
        time.sleep(3)
        # the figures are one second's: the burst starts as a second does, so that it is not split over two
        time.sleep(1.02 - time.time() % 1.0)
        with httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address="127.3.1.1")) as web:
            for _ in range(20):  # a few requests at the second replica: they show in the first one's figures
                web.get(f"{second}/healthz")
        headers = {"authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = httpx.get(f"{first}/admin/api/detector", headers=headers, timeout=10).json()
            if seen["figures"].get("requests", 0) >= 20:
                break
            time.sleep(0.3)
        assert seen["figures"]["requests"] >= 20
        leading = [httpx.get(f"{url}/admin/api/detector", headers=headers, timeout=10).json()["leading"]
                   for url in (first, second)]
        assert sorted(leading) == [False, True]
        stop = threading.Event()
        tally: collections.Counter[str] = collections.Counter()
        flooder = threading.Thread(target=flood, args=(first, stop, tally))
        flooder.start()
        try:
            wait_for(second, "under_attack", within=15)  # the other replica: the level is shared
        finally:
            stop.set()
            flooder.join()
        # seen once in a full run on two loaded cores (cause not found): rare, never the rule
        assert tally["dropped"] <= max(1, tally["answered"] // 100), tally
