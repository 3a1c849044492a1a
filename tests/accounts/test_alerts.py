"""Account alerts and sessions over real HTTP and real SMTP: the owner is told (by e-mail and on the
activity page) of a sign-in from a new device and network, a burst of wrong passwords and a new API key,
and can sign out sessions they do not recognise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.accounts.conftest import Inbox, account, browser, network
from tests.conftest import PASSWORD, floodwall_process


@pytest.fixture(scope="module")
def alerts_url(inbox: tuple[Inbox, int], model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("alerts")
    env = {"FLOODWALL_MAIL_URL": f"smtp://127.0.0.1:{inbox[1]}", "FLOODWALL_ACCOUNTS_KEY_CACHE_TTL": "0"}
    with floodwall_process(tmp, f"sqlite:///{tmp / 'floodwall.db'}", model_url, env=env) as url:
        yield url


def owner(base_url: str) -> tuple[httpx.Client, str, int]:
    net = network()
    web, address = account(base_url, net)
    return web, address, net


def sign_in(web: httpx.Client, address: str, password: str = PASSWORD) -> int:
    return web.post("/auth/login", json={"email": address, "password": password}).status_code


def alerts(web: httpx.Client) -> list[dict[str, Any]]:
    return [e for e in web.get("/account/activity").json()["events"] if e["alert"]]


def test_a_sign_in_from_a_new_device_and_network_alerts_the_owner(alerts_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address, net = owner(alerts_url)
    with browser(alerts_url, net, host=4) as new_browser_at_home:
        assert sign_in(new_browser_at_home, address) == 200  # a new device on a network the account uses
    assert sign_in(web, address) == 200
    assert alerts(web) == [] and not [m for m in inbox[0].messages if m["To"] == address]
    with browser(alerts_url, network(), user_agent="stranger/1.0") as stranger:
        assert sign_in(stranger, address) == 200
    [mail] = inbox[0].wait_for(address)
    assert mail["Subject"] == "New sign-in to your account"
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes) and b"stranger/1.0" in body and b"change your password" in body
    [event] = alerts(web)
    assert event["kind"] == "login" and event["detail"]["new_device"] is True
    page = web.get("/chat", headers={"accept": "text/html"})
    assert "Security notices" in page.text and "a sign-in from a new device and network" in page.text


def test_a_burst_of_wrong_passwords_alerts_the_owner_once(alerts_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address, _ = owner(alerts_url)
    with browser(alerts_url, network()) as attacker:
        for _ in range(7):
            assert sign_in(attacker, address, "wrong password 123") == 401
    [mail] = inbox[0].wait_for(address)
    assert mail["Subject"] == "Failed sign-ins to your account"
    [event] = alerts(web)
    assert event["kind"] == "failed_logins" and event["detail"]["count"] == 5
    assert len([m for m in inbox[0].messages if m["To"] == address]) == 1


def test_a_new_api_key_alerts_the_owner(alerts_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address, _ = owner(alerts_url)
    made = web.post("/account/keys", json={"name": "laptop"})
    assert made.status_code == 201
    [mail] = inbox[0].wait_for(address)
    body = mail.get_payload(decode=True)
    assert mail["Subject"] == "New API key on your account"
    assert isinstance(body, bytes) and made.json()["prefix"].encode() in body and b"laptop" in body
    [event] = alerts(web)
    assert event["kind"] == "key_created" and event["detail"]["prefix"] == made.json()["prefix"]


def test_the_owner_signs_out_sessions_they_do_not_recognise(alerts_url: str) -> None:
    web, address, net = owner(alerts_url)
    with browser(alerts_url, net, host=5) as second, browser(alerts_url, net, host=6) as third:
        assert sign_in(second, address) == 200 and sign_in(third, address) == 200
        sessions = web.get("/account/sessions").json()["data"]
        assert len(sessions) == 3  # the owner's own sign-in, two more
        assert [s["current"] for s in sessions].count(True) == 1
        mine = next(s for s in second.get("/account/sessions").json()["data"] if s["current"])
        assert web.delete(f"/account/sessions/{mine['id']}").json() == {"revoked": 1}
        assert second.get("/account/keys").status_code == 401
        assert web.delete(f"/account/sessions/{mine['id']}").status_code == 404  # gone already
        for bad in ("abc", "999999999"):
            assert web.delete(f"/account/sessions/{bad}").status_code == 404
        other, _, _ = owner(alerts_url)
        theirs = other.get("/account/sessions").json()["data"][0]["id"]
        assert web.delete(f"/account/sessions/{theirs}").status_code == 404  # not the owner's to end
        assert other.get("/account/keys").status_code == 200
        other.close()
        page = web.get("/activity", headers={"accept": "text/html"})
        assert "Sign out every other session" in page.text and "this session" in page.text
        signed_out = web.post("/account/sessions/revoke-others", content=b"",  # the page's button: an empty form
                              headers={"accept": "text/html", "content-type": "application/x-www-form-urlencoded"})
        assert signed_out.status_code == 303 and signed_out.headers["location"] == "/activity"
        assert third.get("/account/keys").status_code == 401
        assert [s["current"] for s in web.get("/account/sessions").json()["data"]] == [True]
        kinds = [e["kind"] for e in web.get("/account/activity").json()["events"]]
        assert kinds.count("sessions_revoked") == 2
    cross_site = httpx.post(f"{alerts_url}/account/sessions/revoke-others", cookies=web.cookies,
                            headers={"origin": "https://evil.example"})
    assert cross_site.status_code == 403


def test_the_right_password_with_wrong_codes_alerts_the_owner_once(alerts_url: str, inbox: tuple[Inbox, int]) -> None:
    """Finding 4 of issue 21: guessing two-factor codes behind a known password tells the owner."""
    from tests.accounts.test_two_factor import turn_on

    web, address, _ = owner(alerts_url)
    turn_on(web)
    with browser(alerts_url, network()) as attacker:
        for n in range(5):
            answer = attacker.post("/auth/login", json={"email": address, "password": PASSWORD, "totp": f"00000{n}"})
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_totp"
    mails = inbox[0].wait_for(address, subject="Your password was used with wrong two-factor codes")
    assert len(mails) == 1 and "change it now" in str(mails[0])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_session_unused_for_the_idle_timeout_ends(model_url: str, tmp_path_factory: pytest.TempPathFactory,
                                                     database: str) -> None:
    """Finding 8 of issue 21: sessions end after an idle time (here 1.5 s) as well as at their lifetime; use
    keeps one alive."""
    import contextlib
    import time

    from tests.conftest import postgres_database

    tmp = tmp_path_factory.mktemp("idle")
    env = {"FLOODWALL_ACCOUNTS_SESSION_IDLE_TIMEOUT": "1500ms", "FLOODWALL_ACCOUNTS_KEY_CACHE_TTL": "0"}
    where = postgres_database() if database == "postgresql" else contextlib.nullcontext(f"sqlite:///{tmp}/f.db")
    with where as url_of_db, floodwall_process(tmp, url_of_db, model_url, env=env) as url:
        web, _ = account(url)
        for _ in range(5):  # used every half second: alive past the idle time
            assert web.get("/account/keys").status_code == 200
            time.sleep(0.5)
        time.sleep(2.0)
        assert web.get("/account/keys").status_code == 401
        web.close()
