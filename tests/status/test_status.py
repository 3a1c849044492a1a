"""The status page, its feed and Statuspage JSON over real HTTP; the automatic incident through a level's
rise and fall; operators' incidents, accounts and the audit log through the admin API."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, default_policy_process, eventually

TOKEN = "admin-" + secrets.token_hex(16)
ATOM = "{http://www.w3.org/2005/Atom}"


@pytest.fixture(scope="module")
def served(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_STATUS_REFRESH_INTERVAL": "0.3s",
           "FLOODWALL_STATUS_RESOLVE_AFTER": "1s", "FLOODWALL_DEFENSE_NEW_ACCOUNT_AGE": "0s"}
    with default_policy_process(tmp_path_factory.mktemp("status"), model_url, "memory", env) as url:
        yield url


@pytest.fixture()
def admin(served: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        yield client


def set_level(admin: httpx.Client, level: str) -> None:
    assert admin.put("/admin/api/level", json={"level": level, "reason": "drill"}).status_code == 200


def test_a_calm_service_says_so_in_every_format(served: str) -> None:
    summary = httpx.get(f"{served}/api/v2/summary.json").json()
    assert summary["status"] == {"indicator": "none", "description": "All Systems Operational"}
    assert [c["name"] for c in summary["components"]] == ["Web app", "API", "Registration", "Login", "Model"]
    assert {c["status"] for c in summary["components"]} == {"operational"}
    assert summary["floodwall"]["defense_level"] == "normal" and summary["floodwall"]["registration"] == "open"
    assert summary["scheduled_maintenances"] == [] and summary["page"]["time_zone"] == "Etc/UTC"
    for part, key in (("status", "status"), ("components", "components"), ("incidents", "incidents"),
                      ("incidents/unresolved", "incidents")):
        answer = httpx.get(f"{served}/api/v2/{part}.json")
        assert answer.status_code == 200 and key in answer.json() and "page" in answer.json(), part
        assert answer.headers["cache-control"] == "public, max-age=5"
    page = httpx.get(f"{served}/status")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "All Systems Operational" in page.text and page.text.count('class="component"') == 5
    assert page.text.count('class="bar ') == 5 * 90
    feed = httpx.get(f"{served}/status/history.atom")
    assert feed.headers["content-type"].startswith("application/atom+xml")
    assert ET.fromstring(feed.content).tag == f"{ATOM}feed"


def test_the_service_opens_updates_and_resolves_its_own_incident(served: str, admin: httpx.Client) -> None:
    set_level(admin, "under_attack")
    try:
        def unresolved() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = httpx.get(f"{served}/api/v2/incidents/unresolved.json").json()["incidents"]
            return found

        opened = eventually(unresolved)
        assert len(opened) == 1 and opened[0]["status"] == "identified" and opened[0]["impact"] == "major"
        first = opened[0]["incident_updates"][0]["body"]
        assert first.startswith("Due to large-scale malicious attacks on our services, registration may be busy.")
        assert "Registered users can log in normally." in first
        summary = httpx.get(f"{served}/api/v2/summary.json").json()
        assert summary["floodwall"] == {"defense_level": "under_attack", "registration": "limited",
                                        "incidents_stale": False}
        statuses = {c["id"]: c["status"] for c in summary["components"]}
        assert statuses["registration"] == "partial_outage" and statuses["login"] == "operational"
        assert summary["status"]["indicator"] == "major"
        page = httpx.get(f"{served}/status").text
        assert "Large-scale malicious attacks" in page and "Registered users can log in normally." in page
        set_level(admin, "elevated")
        assert eventually(lambda: unresolved() and unresolved()[0]["status"] == "monitoring")
    finally:
        set_level(admin, "normal")

    def resolved() -> dict[str, Any] | None:
        incidents = httpx.get(f"{served}/api/v2/incidents.json").json()["incidents"]
        return next((i for i in incidents if i["status"] == "resolved" and i["name"] == opened[0]["name"]), None)

    done = eventually(resolved)
    assert done is not None and done["resolved_at"] is not None
    assert [u["status"] for u in done["incident_updates"]] == ["resolved", "monitoring", "identified"]
    assert unresolved() == []
    entries = ET.fromstring(httpx.get(f"{served}/status/history.atom").content).findall(f"{ATOM}entry")
    assert any(e.findtext(f"{ATOM}title") == "Large-scale malicious attacks" for e in entries)
    assert "Past incidents" in httpx.get(f"{served}/status").text
    wanted = {"level.set", "incident.open", "incident.update", "incident.resolve"}
    assert eventually(lambda: wanted <= {e["action"] for e in admin.get("/admin/api/audit").json()["events"]})


def test_operators_post_incidents_and_bad_ones_are_refused(served: str, admin: httpx.Client) -> None:
    made = admin.post("/admin/api/incidents", json={
        "name": "Model answers slowly", "body": "We are looking into slow answers.", "impact": "minor",
        "components": {"model": "degraded_performance"}})
    assert made.status_code == 201, made.text
    incident = made.json()
    assert incident["status"] == "investigating" and incident["updates"][0]["by"].startswith("admin@")

    def model_status() -> str:
        summary = httpx.get(f"{served}/api/v2/summary.json").json()
        return str({c["id"]: c["status"] for c in summary["components"]}["model"])

    assert eventually(lambda: model_status() == "degraded_performance")
    resolved = admin.post(f"/admin/api/incidents/{incident['id']}/updates",
                          json={"status": "resolved", "body": "Answers are fast again."})
    assert resolved.status_code == 200 and resolved.json()["resolved_at"] is not None
    assert eventually(lambda: model_status() == "operational")
    for bad, param in (({"name": "x"}, "body"), ({"name": "x", "body": "y", "status": "fixed"}, "status"),
                       ({"name": "x", "body": "y", "components": {"moon": "major_outage"}}, "components"),
                       ({"name": "", "body": "y"}, "name"), ({"name": "x", "body": 3}, "body"),
                       ({"name": "x", "body": "y", "impact": "huge"}, "impact")):
        answer = admin.post("/admin/api/incidents", json=bad)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (bad, answer.text)
    assert admin.post("/admin/api/incidents", content=b"[1]").status_code == 400
    missing = admin.post("/admin/api/incidents/999999/updates", json={"status": "resolved", "body": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "incident_not_found"
    assert admin.post("/admin/api/incidents/abc/updates", json={"status": "resolved", "body": "x"}).status_code == 404
    assert httpx.post(f"{served}/admin/api/incidents", json={"name": "x", "body": "y"}).status_code == 401


def test_operators_disable_an_account_and_sign_it_out(served: str, admin: httpx.Client) -> None:
    email = f"u-{secrets.token_hex(4)}@example.com"
    with httpx.Client(base_url=served, transport=httpx.HTTPTransport(local_address="127.9.0.1")) as user:
        assert user.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        assert user.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
        found = admin.get("/admin/api/users", params={"q": email[:10]}).json()["users"]
        assert [u["email"] for u in found] == [email] and found[0]["sessions"] == 1
        user_id = found[0]["id"]
        disabled = admin.post(f"/admin/api/users/{user_id}/disable")
        assert disabled.status_code == 200 and disabled.json()["disabled"] is True
        assert disabled.json()["sessions"] == 0
        assert user.get("/account/keys").status_code == 401  # the session ended with the account
        assert user.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 401
        assert admin.post(f"/admin/api/users/{user_id}/enable").json()["disabled"] is False
        assert user.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
        ended = admin.post(f"/admin/api/users/{user_id}/sign-out").json()
        assert ended == {"id": user_id, "sessions_ended": 1}
        assert user.get("/account/keys").status_code == 401
        kinds = [e["kind"] for e in user.post("/auth/login", json={"email": email, "password": PASSWORD}) and
                 user.get("/account/activity").json()["events"]]
        assert {"account_disabled", "account_enabled", "sessions_revoked"} <= set(kinds)
    assert admin.post("/admin/api/users/999999/disable").status_code == 404
    assert admin.get("/admin/api/users", params={"limit": "x"}).status_code == 400
    def audit() -> list[dict[str, Any]]:  # written in the background: a moment after the answer
        events: list[dict[str, Any]] = admin.get("/admin/api/audit", params={"action": "user."}).json()["events"]
        return events

    assert eventually(lambda: [e["action"] for e in audit()][:3] == ["user.sign_out", "user.enable", "user.disable"])
    assert audit()[0]["target"] == str(user_id) and audit()[0]["actor"].startswith("admin@")


def test_the_command_line_posts_incidents_finds_accounts_and_reads_the_audit_log(served: str, tmp_path: Any) -> None:
    import subprocess
    import sys

    def floodwall(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "floodwall", *args, "--url", served, "--token", TOKEN],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    opened = floodwall("incident", "open", "Login emails are late", "--body", "Mail is slow.", "--impact", "minor",
                       "--component", "login=degraded_performance")
    assert opened.returncode == 0 and opened.stdout.startswith("opened incident "), opened.stderr
    number = opened.stdout.split()[2].rstrip(":")
    assert "Login emails are late" in floodwall("incident", "list").stdout
    updated = floodwall("incident", "update", number, "--status", "identified", "--body", "The relay is slow.")
    assert updated.returncode == 0 and "identified" in updated.stdout
    assert "resolved" in floodwall("incident", "resolve", number).stdout
    refused = floodwall("incident", "open", "x", "--body", "y", "--component", "moon=major_outage")
    assert refused.returncode == 1 and "components" in refused.stderr
    assert floodwall("users", "list").returncode == 0
    assert "incident.resolve" in floodwall("audit", "--action", "incident.").stdout
