"""Admission by the model server's own figures, end to end: the simulated model publishes vLLM's gauges at
/metrics (model.metrics), floodwall finds them (upstream.metrics = auto), admits by them, and says so."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx

from tests.conftest import Account, floodwall_process, model_process

TOKEN = "admin-" + secrets.token_hex(16)


def admission(url: str) -> dict[str, object]:
    answer = httpx.get(f"{url}/admin/api/admission", headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    found: dict[str, object] = answer.json()
    return found


def test_the_model_servers_figures_are_found_and_admitted_by(tmp_path: Path) -> None:
    with model_process(tmp_path, slots=4, metrics="true", tokens_per_second=500, reply_tokens=8) as model, \
            floodwall_process(tmp_path, f"sqlite:///{tmp_path / 'fw.db'}", model,
                              env={"FLOODWALL_ADMIN_TOKEN": TOKEN}) as url:
        deadline = time.monotonic() + 15
        while (stats := admission(url))["source"] != "figures":
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
        assert stats["server"] == {"running": 0.0, "waiting": 0.0, "cache": 0.0, "capacity": None}
        account = Account(url)
        key = account.new_key()
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {key}"},
                            json={"model": "floodwall-simulated-chat", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        account.close()


def test_a_model_server_without_figures_is_admitted_by_latency(tmp_path: Path) -> None:
    with model_process(tmp_path) as model, \
            floodwall_process(tmp_path, f"sqlite:///{tmp_path / 'fw.db'}", model,
                              env={"FLOODWALL_ADMIN_TOKEN": TOKEN}) as url:
        time.sleep(1)
        stats = admission(url)
        assert stats["source"] == "latency" and stats["server"] is None
        log = next(tmp_path.glob("serve-*.log")).read_text()
        assert "model_metrics_none" in log and "model_metrics_unread" not in log
