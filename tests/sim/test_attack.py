"""`floodwall attack` end to end: a short mixed attack against a real floodwall (default policy) in front
of the simulated model, through the command a user runs; and the simulator's own limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from floodwall.sim.attack.plan import Plan
from floodwall.sim.attack.traffic import Sources, Target, TargetError
from tests.conftest import CORPORA, floodwall_process, model_process

ADMIN = "test-admin-token-0123456789-abcdefghij"  # admin.token: 32 characters at least

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_mixed_attack_is_reported(tmp_path: Path) -> None:
    default_policy = {"FLOODWALL_EDGE_POLICY": "", "FLOODWALL_ADMIN_TOKEN": ADMIN}
    with model_process(tmp_path, slots=8, tokens_per_second=200, reply_tokens=8) as model, \
            floodwall_process(tmp_path, f"sqlite:///{tmp_path / 'attack.db'}", model, env=default_policy) as base:
        report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
        command = [sys.executable, "-m", "floodwall", "attack", "mixed", "--target", base, "--calm", "2",
                   "--duration", "4", "--recovery", "2", "--sources", "300", "--rate", "150", "--users", "3",
                   "--admin-token", ADMIN, "--report", str(report_path), "--plot", str(plot_path)]
        if CORPORA.is_dir():
            command += ["--corpora", str(CORPORA)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "established users, attack" in done.stdout
    report = json.loads(report_path.read_text())
    assert plot_path.read_bytes().startswith(b"\x89PNG")
    assert report["addressing"] == "bound loopback source addresses"
    assert set(report["populations"]) == {"established", "flood", "signup-bots", "flash-crowd", "stuffing",
                                          "probe", "jailbreak"}
    established = report["established"]
    assert established["calm"]["requests"] > 0 and established["attack"]["requests"] > 0
    assert established["calm"]["success_rate"] == 1.0
    assert established["calm"]["ttft_ms"]["p50"] is not None
    attackers = report["attackers"]
    # the edge's limits answer the flood: most of it never reaches the model
    assert report["populations"]["flood"]["requests"] > 300
    assert attackers["reached_model_share"] < 0.5
    # no account opened with a wrong password, and no probe made the service fail
    assert attackers["logins_with_wrong_password"] == 0
    # the victims' owners, from their own devices, keep signing in through the wave
    assert attackers["owner_logins"] > 0 and attackers["owner_logins_ok"] == attackers["owner_logins"]
    assert attackers["probe_server_errors"] == 0
    assert report["server_failures"] == {}, report["server_failures"]  # no population saw a failure
    assert report["populations"]["probe"]["statuses"].get("500") is None
    # registration is limited per address and network (5 per 30 minutes): the bots make few accounts
    assert attackers["bot_accounts_created"] <= attackers["bot_signup_attempts"]
    assert report["service"]["levels"][0][1] == "normal"


@pytest.mark.parametrize("url", ["http://example.com", "http://10.0.0.1:8080", "https://127.0.0.1:8080", "ftp://x"])
def test_traffic_only_goes_to_loopback(url: str) -> None:
    with pytest.raises(TargetError):
        Target.parse(url)


def test_targets_and_sources() -> None:
    target = Target.parse("http://127.0.0.1:8080/v1/")
    assert (target.url, target.host, target.port) == ("http://127.0.0.1:8080", "127.0.0.1", 8080)
    sources = Sources()
    first, people, second = sources.take(300), sources.take(3, own_networks=True), sources.take(2)
    assert len(set(first + people + second)) == 305
    assert all(address.startswith("127.") and address != "127.0.0.1" for address in first + people + second)
    assert len({address.rsplit(".", 1)[0] for address in first + people}) == 2 + 3  # 300 share two /24s
    with pytest.raises(ValueError):
        sources.take(20_000, own_networks=True)


@pytest.mark.parametrize("change", [{"duration": 0}, {"duration": 10_000}, {"rate": 10**6}, {"sources": 10**6},
                                    {"scenario": "ddos-everything"}])
def test_every_run_is_bounded(change: dict[str, object]) -> None:
    plan = Plan("flood", "http://127.0.0.1:8080")
    for name, value in change.items():
        setattr(plan, name, value)
    with pytest.raises(ValueError):
        plan.check()
