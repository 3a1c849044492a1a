"""The login guard over real HTTP with the default policy, its counters in memory and in the real Redis:
failed sign-ins limited per address, per account and per device, and owners' own devices kept working."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, default_policy_process

TOKEN = "admin-" + secrets.token_hex(16)
_addresses = itertools.count(10)


@pytest.fixture(scope="module", params=["memory", "redis"])
def guard_url(request: pytest.FixtureRequest, model_url: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with default_policy_process(tmp_path_factory.mktemp("guard"), model_url, request.param,
                                {"FLOODWALL_ADMIN_TOKEN": TOKEN}) as url:
        yield url


def client(base_url: str, **kwargs: Any) -> httpx.Client:
    """A client speaking from a loopback address of its own (limits are keyed by address)."""
    n = next(_addresses)
    return httpx.Client(base_url=base_url, timeout=30, transport=httpx.HTTPTransport(
        local_address=f"127.3.{n // 250}.{n % 250 + 3}"), **kwargs)


def register(base_url: str) -> tuple[str, httpx.Client]:
    """A new account; the client that made it, which holds its device cookie."""
    email = f"owner-{secrets.token_hex(5)}@example.com"
    owner = client(base_url)
    created = owner.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert created.status_code == 201, created.text
    return email, owner


def login(web: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return web.post("/auth/login", json={"email": email, "password": password})


def assert_throttled(response: httpx.Response, reason: str) -> str:
    assert response.status_code == 429, response.text
    assert response.headers["x-floodwall-reason"] == reason
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "login_throttled"
    message: str = error["message"]
    return message


def test_guessing_from_one_address_stops_after_five_failures_even_with_the_right_password(guard_url: str) -> None:
    email, owner = register(guard_url)
    with client(guard_url) as guesser:
        for _ in range(5):
            assert login(guesser, email, "wrong password 1").status_code == 401
        assert_throttled(login(guesser, email), "login-failures/login+ip")
        # the guesser's other targets are not locked by this pair
        assert login(guesser, "someone-else@example.com", "whatever12").status_code == 401
    # the owner, from their own address, is not affected
    assert login(owner, email).status_code == 200
    owner.close()


def test_a_wave_against_one_account_locks_unknown_devices_but_not_the_owners(guard_url: str) -> None:
    email, owner = register(guard_url)
    for i in range(10):
        with client(guard_url) as attacker:
            assert login(attacker, email, f"guess number {i}").status_code == 401
    with client(guard_url) as thief:  # the right password, leaked, from a device the account never used
        message = assert_throttled(login(thief, email), "login-failures/login")
        assert "device you have used before" in message
    # the owner's browser carries the device cookie its sign-up set: it still signs in
    signed_in = login(owner, email)
    assert signed_in.status_code == 200, signed_in.text
    assert owner.get("/account/activity").json()["events"][0]["detail"] is None  # a known device
    owner.close()


def test_the_lock_looks_the_same_for_an_address_with_no_account(guard_url: str) -> None:
    nobody = f"nobody-{secrets.token_hex(5)}@example.com"
    email, owner = register(guard_url)
    owner.close()
    answers = []
    for target in (nobody, email):
        for i in range(10):
            with client(guard_url) as attacker:
                assert login(attacker, target, f"guess number {i}").status_code == 401
        with client(guard_url) as late:
            refused = login(late, target, "one more guess")
            assert_throttled(refused, "login-failures/login")
            answers.append((refused.status_code, refused.json()["error"]["message"]))
    assert answers[0] == answers[1]


def test_one_address_trying_many_accounts_is_stopped(guard_url: str) -> None:
    with client(guard_url) as stuffer:
        for i in range(20):
            assert login(stuffer, f"leaked-{i}-{secrets.token_hex(3)}@example.com", "Summer2024!").status_code == 401
        assert_throttled(login(stuffer, "leaked-last@example.com", "Summer2024!"), "login-failures/ip")


def test_a_forged_or_foreign_device_cookie_counts_as_unknown(guard_url: str) -> None:
    email, owner = register(guard_url)
    cookie = owner.cookies.get("fw_device", domain="", path="/auth") or next(
        c.value for c in owner.cookies.jar if c.name == "fw_device")
    owner.close()
    for i in range(10):
        with client(guard_url) as attacker:
            assert login(attacker, email, f"guess {i}").status_code == 401
    tampered = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    with client(guard_url, cookies={"fw_device": tampered}) as forger:
        assert_throttled(login(forger, email), "login-failures/login")
    # a genuine device cookie of another account does not open this one
    _other, other_owner = register(guard_url)
    foreign = next(c.value for c in other_owner.cookies.jar if c.name == "fw_device")
    other_owner.close()
    with client(guard_url, cookies={"fw_device": foreign}) as borrower:
        assert_throttled(login(borrower, email), "login-failures/login")


def test_a_sign_in_from_a_new_device_is_marked_in_the_activity_log(guard_url: str) -> None:
    email, owner = register(guard_url)
    owner.close()
    with client(guard_url) as elsewhere:
        assert login(elsewhere, email).status_code == 200
        events = elsewhere.get("/account/activity").json()["events"]
        assert events[0]["kind"] == "login" and events[0]["detail"] == {"new_device": True}
        # now this device is known: its next sign-in is not new
        assert login(elsewhere, email).status_code == 200
        assert elsewhere.get("/account/activity").json()["events"][0]["detail"] is None


def test_operators_see_the_failed_login_ratio(guard_url: str) -> None:
    email, owner = register(guard_url)
    assert login(owner, email).status_code == 200
    owner.close()
    with client(guard_url) as wrong:
        assert login(wrong, email, "not the password").status_code == 401
    with client(guard_url, headers={"authorization": f"Bearer {TOKEN}"}) as operator:
        figures = operator.get("/admin/api/logins").json()
    assert figures["window_seconds"] == 60
    assert figures["succeeded"] >= 1 and figures["failed"] >= 1
    assert 0 < figures["failed_ratio"] < 1
    assert figures["failed_ratio"] == round(figures["failed"] / (figures["failed"] + figures["succeeded"]), 4)
