"""Accounts over real HTTP, on SQLite and PostgreSQL: registration, login, sessions, keys, activity."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.conftest import PASSWORD, Account


def _email() -> str:
    return f"new-{secrets.token_hex(6)}@example.com"


def test_register_returns_the_user(http: httpx.Client) -> None:
    email = _email()
    response = http.post("/auth/register", json={"email": email.upper(), "password": PASSWORD})
    assert response.status_code == 201
    body = response.json()
    assert body["user"]["email"] == email and isinstance(body["user"]["id"], int)
    assert body["verification_required"] is False


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, 400, "invalid_email", "email"),
        ({"email": "a@b", "password": PASSWORD}, 400, "invalid_email", "email"),
        ({"email": "x@example.com", "password": "short"}, 400, "weak_password", "password"),
        ({"email": "x@example.com", "password": "p" * 2000}, 400, "invalid_password", "password"),
        ({"email": "bot@mailinator.com", "password": PASSWORD}, 400, "disposable_email", "email"),
        ({"email": "bot@inbox.mailinator.com", "password": PASSWORD}, 400, "disposable_email", "email"),
        ({"email": "x@example.com", "password": "Password1"}, 400, "password_too_common", "password"),
        ({"email": "x@example.com", "password": "qwertyuiop"}, 400, "password_too_common", "password"),
        ({"email": "x@example.com"}, 400, "missing_parameter", "password"),
        ({"email": 5, "password": PASSWORD}, 400, "invalid_parameter", "email"),
        ({"email": ["a@b.c"], "password": PASSWORD}, 400, "invalid_parameter", "email"),
    ],
)
def test_register_refusals(http: httpx.Client, payload: dict[str, object], status: int, code: str,
                           param: str) -> None:
    response = http.post("/auth/register", json=payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert response.headers["x-floodwall-reason"] == code


def test_register_twice_is_409(http: httpx.Client) -> None:
    email = _email()
    assert http.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
    again = http.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert again.status_code == 409 and again.json()["error"]["code"] == "email_taken"


def test_login_sets_a_safe_session_cookie(http: httpx.Client, account: Account) -> None:
    response = http.post("/auth/login", json={"email": account.email, "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["user"] == {"id": account.id, "email": account.email}
    cookie = response.headers["set-cookie"].lower()
    assert "fw_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # plain HTTP: a Secure cookie would never come back


def test_cookie_secure_behind_https(base_url: str, account: Account) -> None:
    # the server trusts 127.0.0.2 as its TLS terminator: X-Forwarded-Proto https makes the cookie Secure
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=base_url, transport=transport) as proxy:
        response = proxy.post("/auth/login", json={"email": account.email, "password": PASSWORD},
                              headers={"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"})
    assert response.status_code == 200
    assert "secure" in response.headers["set-cookie"].lower()
    events = account.web.get("/account/activity").json()["events"]
    assert events[0]["kind"] == "login" and events[0]["ip"] == "203.0.113.9"


def test_wrong_password_and_unknown_email_get_the_same_answer(http: httpx.Client, account: Account) -> None:
    wrong = http.post("/auth/login", json={"email": account.email, "password": "not the password"})
    unknown = http.post("/auth/login", json={"email": _email(), "password": "not the password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "invalid_credentials"
    assert "set-cookie" not in wrong.headers


def test_activity_records_logins_failures_and_keys_with_address_and_agent(http: httpx.Client,
                                                                           account: Account) -> None:
    http.post("/auth/login", json={"email": account.email, "password": "wrong password"},
              headers={"user-agent": "stuffer/0.1"})
    key = account.new_key("laptop")
    key_id = account.web.get("/account/keys").json()["data"][0]["id"]
    account.web.delete(f"/account/keys/{key_id}")
    events = account.web.get("/account/activity").json()["events"]
    kinds = [e["kind"] for e in events]
    assert kinds == ["key_revoked", "key_created", "login_failed", "login", "account_created"]
    failed = events[2]
    assert failed["ip"] == "127.0.0.1" and failed["user_agent"] == "stuffer/0.1"
    assert failed["detail"] == {"why": "wrong_password"}
    assert events[1]["detail"]["prefix"] == key[:11]
    assert all(set(e) == {"at", "kind", "ip", "user_agent", "detail", "alert"} for e in events)
    assert [e["alert"] for e in events] == [False, True, False, False, False]  # a new key tells its owner


def test_api_key_shown_once_and_only_prefix_listed(account: Account) -> None:
    created = account.web.post("/account/keys", json={"name": "ci"}).json()
    assert created["key"].startswith("fw_") and len(created["key"]) > 40
    assert created["prefix"] == created["key"][:11]
    assert set(created) >= {"id", "key", "prefix", "created_at"}
    listed = account.web.get("/account/keys").json()["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and created["key"] not in account.web.get("/account/keys").text


def test_key_routes_need_a_session(http: httpx.Client) -> None:
    for response in (http.get("/account/keys"), http.post("/account/keys", json={}),
                     http.delete("/account/keys/1"), http.get("/account/activity")):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_signed_in"


def test_cannot_revoke_someone_elses_key(base_url: str, account: Account) -> None:
    account.new_key()
    key_id = account.web.get("/account/keys").json()["data"][0]["id"]
    other = Account(base_url)
    try:
        response = other.web.delete(f"/account/keys/{key_id}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "key_not_found"
        assert other.web.delete("/account/keys/not-a-number").status_code == 404
    finally:
        other.close()
    assert len(account.web.get("/account/keys").json()["data"]) == 1


def test_logout_ends_the_session(account: Account) -> None:
    assert account.web.post("/auth/logout").status_code == 200
    assert account.web.get("/account/keys").status_code == 401


def test_stolen_cookie_is_useless_after_logout(base_url: str, account: Account) -> None:
    cookie = account.web.cookies["fw_session"]
    account.web.post("/auth/logout")
    with httpx.Client(base_url=base_url, cookies={"fw_session": cookie}) as thief:
        assert thief.get("/account/keys").status_code == 401


def test_password_change_signs_out_other_sessions(base_url: str, account: Account) -> None:
    with httpx.Client(base_url=base_url) as other_device:
        assert other_device.post("/auth/login", json={"email": account.email, "password": PASSWORD}).status_code == 200
        wrong = account.web.post("/account/password", json={"current_password": "nope nope", "new_password": "x" * 12})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "current_password"
        changed = account.web.post("/account/password",
                                   json={"current_password": PASSWORD, "new_password": "a brand new passphrase"})
        assert changed.status_code == 200
        assert other_device.get("/account/keys").status_code == 401
    assert account.web.get("/account/keys").status_code == 200
    with httpx.Client(base_url=base_url) as fresh:
        assert fresh.post("/auth/login", json={"email": account.email, "password": PASSWORD}).status_code == 401
        assert fresh.post("/auth/login", json={"email": account.email,
                                               "password": "a brand new passphrase"}).status_code == 200
    kinds = [e["kind"] for e in account.web.get("/account/activity").json()["events"]]
    assert kinds[:4] == ["login", "login_failed", "password_changed", "login"]


@pytest.mark.parametrize("path", ["/auth/login", "/auth/register", "/auth/password-reset", "/auth/reset"])
def test_cross_site_forms_are_refused_before_signing_in_too(http: httpx.Client, account: Account, path: str) -> None:
    """Log-in CSRF: a hostile page must not sign its visitor into the attacker's account, or make one."""
    form = {"email": account.email, "password": PASSWORD, "token": "x"}
    for origin in ("https://evil.example", "http://127.0.0.1.evil.example"):
        refused = http.post(path, data=form, headers={"origin": origin, "accept": "text/html"})
        assert refused.status_code == 403 and refused.headers["x-floodwall-reason"] == "cross_site_request"
        assert "Cross-site request refused" in refused.text
    referred = http.post(path, data=form, headers={"referer": "https://evil.example/page"})
    assert referred.status_code == 403


def test_cross_site_post_is_refused(account: Account) -> None:
    response = account.web.post("/account/keys", json={}, headers={"origin": "https://evil.example"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "cross_site_request"
    assert response.headers["x-floodwall-reason"] == "cross_site_request"
    assert account.web.get("/account/keys").json()["data"] == []
