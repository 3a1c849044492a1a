"""/admin/api/explain and the gate share one decision function: each request below is explained, then sent,
and what the gate did must be what explain said, refusal for refusal (status and reason), across limits
running out, a remembered refusal, a ban, scoring, credential lookups, and the registration modes."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, default_policy_process

TOKEN = "admin-" + secrets.token_hex(16)
_hosts = itertools.count(10)
# what the gate itself refuses with (the routes' own refusals have other reasons)
GATE_CODES = {"rate_limit_exceeded", "login_throttled", "registration_busy", "banned", "denied", "request_blocked"}


@pytest.fixture(scope="module", params=["memory", "redis"])
def url(request: pytest.FixtureRequest, model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_DEFENSE_NEW_ACCOUNT_AGE": "1h"}
    with default_policy_process(tmp_path_factory.mktemp("explain"), model_url, request.param, env) as found:
        yield found


@pytest.fixture
def operator(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30,
                      transport=httpx.HTTPTransport(local_address=f"127.0.20.{next(_hosts) % 250 + 1}")) as client:
        yield client
        client.put("/admin/api/level", json={"level": "normal", "reason": "test"})
        client.put("/admin/api/registration", json={"mode": "auto", "reason": "test"})


def address() -> str:
    n = next(_hosts)
    return f"127.21.{n // 250}.{n % 250 + 1}"


def explained_then_sent(operator: httpx.Client, url: str, source: str, method: str, path: str,
                        headers: dict[str, str] | None = None, **send: Any) -> tuple[dict[str, Any], httpx.Response]:
    """Explain the request, then send it from `source`, and check that the two agree."""
    headers = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "accept": "text/html", **(headers or {})}
    path_only, _, query = path.partition("?")
    found = operator.post("/admin/api/explain", json={"request": {
        "method": method, "path": path_only, "query": query, "headers": headers, "address": source}})
    assert found.status_code == 200, found.text
    said: dict[str, Any] = found.json()
    with httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=source)) as client:
        done = client.request(method, path, headers=headers, **send)
    reason = done.headers.get("x-floodwall-reason", "")
    code = done.json().get("error", {}).get("code") if "json" in done.headers.get("content-type", "") else None
    if said["decision"] == "refuse":
        assert (done.status_code, reason) == (said["status"], said["reason"]), (said, done.text)
    else:
        assert code not in GATE_CODES or reason.startswith("registration/queued"), (said, done.status_code, done.text)
    return said, done


def test_limits_running_out_and_the_remembered_refusal(operator: httpx.Client, url: str) -> None:
    source = address()
    assert operator.put("/admin/api/level", json={"level": "under_attack", "reason": "test"}).status_code == 200
    said = [explained_then_sent(operator, url, source, "GET", "/login")[0]["decision"] for _ in range(14)]
    assert said[0] == "pass" and said[-1] == "refuse" and "refuse" in said[9:12], said


def test_scoring_credentials_and_bans(operator: httpx.Client, url: str) -> None:
    source = address()
    said, _ = explained_then_sent(operator, url, source, "GET", "/login?file=../../../../etc/passwd")
    assert said["decision"] == "flag" and said["reason"].startswith("probe/lfi"), said
    for _ in range(3):  # made-up keys: each not in the cache, each a rationed lookup
        key = "sk-" + secrets.token_urlsafe(32)
        said, done = explained_then_sent(operator, url, source, "POST", "/v1/chat/completions",
                                         {"authorization": f"Bearer {key}", "content-type": "application/json"},
                                         json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert said["decision"] == "pass" and said["tier"] == "anonymous" and done.status_code == 401
    ban = {"target": source, "duration": "1m", "reason": "drill"}
    assert operator.post("/admin/api/bans", json=ban).status_code == 201
    try:
        said, _ = explained_then_sent(operator, url, source, "GET", "/login")
        assert said["decision"] == "refuse" and said["reason"] == "ban/drill"
    finally:
        operator.delete(f"/admin/api/bans/{source}")


def test_a_model_call_and_its_prompt_strikes(operator: httpx.Client, url: str) -> None:
    source = address()
    with httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=source)) as web:
        email = f"x-{secrets.token_hex(4)}@example.com"
        assert web.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        assert web.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
        key = web.post("/account/keys", json={"name": "t"}).json()["key"]
    said, done = explained_then_sent(operator, url, source, "POST", "/v1/chat/completions",
                                     {"authorization": f"Bearer {key}", "content-type": "application/json"},
                                     json={"model": "m", "max_tokens": 4,
                                           "messages": [{"role": "user", "content": "hi"}]})
    assert said["decision"] == "pass" and said["tier"] == "new" and done.status_code == 200, done.text
    assert said["prompt_strikes"] and all(v >= 1 for v in said["prompt_strikes"].values()), said


def test_registration_modes(operator: httpx.Client, url: str) -> None:
    body = {"email": "r@example.com", "password": PASSWORD}
    for mode, decision in (("queued", "queue"), ("closed", "refuse")):
        assert operator.put("/admin/api/registration", json={"mode": mode, "reason": "test"}).status_code == 200
        said, done = explained_then_sent(operator, url, address(), "POST", "/auth/register",
                                         {"accept": "application/json"}, json=body)
        assert said["decision"] == decision, said
        if decision == "queue":  # through the waiting room: an idle one lets its burst straight in
            assert done.status_code == 201 or done.headers["x-floodwall-reason"] == "registration/queued"
    assert operator.put("/admin/api/registration", json={"mode": "auto", "reason": "test"}).status_code == 200
    assert operator.put("/admin/api/level", json={"level": "under_attack", "reason": "test"}).status_code == 200
    said, done = explained_then_sent(operator, url, address(), "POST", "/auth/register", {"accept": "application/json"},
                                     json=body)
    assert said["decision"] == "challenge" and done.json()["error"]["code"] == "challenge_required", (said, done.text)


def test_a_percent_encoded_path_is_classified_as_the_gate_classifies_it(operator: httpx.Client, url: str) -> None:
    said, done = explained_then_sent(operator, url, address(), "POST", "/auth/%6Cogin",
                                     {"accept": "application/json"}, json={"email": "a@example.com"})
    assert said["class"] == "auth-login" and "login/ip" in said["rules"], said
    assert done.status_code == 400  # the sign-in route, reached: its own refusal of the missing password
