"""Two-factor sign-in over real HTTP: turning it on with a code from the app, signing in with a code (once
each: no replay) or a recovery code (once each), turning it off with the password, and the pages."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pyotp
import pytest

from tests.accounts.conftest import account, browser
from tests.conftest import PASSWORD, floodwall_process


@pytest.fixture(scope="module")
def totp_url(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("totp")
    env = {"FLOODWALL_ACCOUNTS_KEY_CACHE_TTL": "0"}
    with floodwall_process(tmp, f"sqlite:///{tmp / 'floodwall.db'}", model_url, env=env) as url:
        yield url


def login(web: httpx.Client, address: str, **extra: str) -> httpx.Response:
    return web.post("/auth/login", json={"email": address, "password": PASSWORD, **extra})


def turn_on(web: httpx.Client) -> tuple[pyotp.TOTP, list[str]]:
    started = web.post("/account/totp/setup").json()
    assert started["otpauth_uri"].startswith("otpauth://totp/floodwall:")
    app = pyotp.TOTP(started["secret"])
    token = started["setup_token"]
    wrong = web.post("/account/totp/enable", json={"setup_token": token, "code": "000000", "password": PASSWORD})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_totp"
    # codes not in ASCII digits: refused as wrong, never a 500 (full-width digits are read as digits)
    for odd in ("\uff11\uff12\uff13\uff14\uff15\uff16", "12345\u0663", "\u00e9" * 6):
        answer = web.post("/account/totp/enable", json={"setup_token": token, "code": odd, "password": PASSWORD})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_totp", answer.text
    thief = web.post("/account/totp/enable", json={"setup_token": token, "code": app.now()})  # a session alone
    assert thief.status_code == 400 and thief.json()["error"]["param"] == "password", thief.text
    done = web.post("/account/totp/enable", json={"setup_token": token, "code": app.now(), "password": PASSWORD})
    assert done.status_code == 201, done.text
    codes: list[str] = done.json()["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    return app, codes


def next_code(app: pyotp.TOTP) -> str:
    """The code of the next 30-second step (accepted for clock drift; the current one was spent turning it on)."""
    return app.at(time.time() + app.interval)


def test_sign_in_asks_for_a_code_and_takes_each_once(totp_url: str) -> None:
    web, address = account(totp_url)
    app, _ = turn_on(web)
    assert web.get("/account/totp").json() == {"enabled": True}
    assert web.post("/account/totp/setup").status_code == 409
    with browser(totp_url) as phone:
        missing = login(phone, address)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "totp_required"
        for bad in ("123456", "12345", "abcdef", "9" * 40):
            refused = login(phone, address, totp=bad)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_totp", bad
        code = next_code(app)
        assert login(phone, address, totp=code).status_code == 200
        replayed = login(phone, address, totp=code)
        assert replayed.status_code == 401 and replayed.json()["error"]["code"] == "invalid_totp"
        wrong_password = phone.post("/auth/login", json={"email": address, "password": "not it", "totp": code})
        assert wrong_password.json()["error"]["code"] == "invalid_credentials"  # the password is checked first
    kinds = [e["kind"] for e in web.get("/account/activity").json()["events"]]
    assert "totp_enabled" in kinds and kinds.count("login_failed") >= 5


def test_recovery_codes_sign_in_once_each(totp_url: str) -> None:
    web, address = account(totp_url)
    _, codes = turn_on(web)
    with browser(totp_url) as lost_phone:
        assert login(lost_phone, address, totp=codes[0].upper()).status_code == 200  # any case, dash or not
        assert login(lost_phone, address, totp=codes[0]).status_code == 401
        assert login(lost_phone, address, totp=codes[1].replace("-", "")).status_code == 200
    used = [e for e in web.get("/account/activity").json()["events"] if e["kind"] == "recovery_code_used"]
    assert [e["detail"]["codes_left"] for e in used] == [8, 9] and all(e["alert"] for e in used)


def test_turning_it_off_asks_for_the_password_and_a_code(totp_url: str) -> None:
    web, address = account(totp_url)
    _, codes = turn_on(web)
    wrong = web.post("/account/totp/disable", json={"password": "not my password", "code": codes[0]})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_current_password"
    without = web.post("/account/totp/disable", json={"password": PASSWORD, "code": "000000"})
    assert without.status_code == 400 and without.json()["error"]["code"] == "invalid_totp"
    done = web.post("/account/totp/disable", json={"password": PASSWORD, "code": codes[0]})
    assert done.json() == {"enabled": False}
    assert login(web, address).status_code == 200
    other, _ = account(totp_url)
    token = web.post("/account/totp/setup").json()["setup_token"]
    stolen = other.post("/account/totp/enable", json={"setup_token": token, "code": "123456", "password": PASSWORD})
    assert stolen.status_code == 400 and stolen.json()["error"]["code"] == "invalid_token"
    assert httpx.post(f"{totp_url}/account/totp/setup").status_code == 401
    other.close()
    web.close()


def test_guessing_the_code_to_turn_it_off_is_limited(totp_url: str) -> None:
    """A stolen session and password: five wrong codes an account every 15 minutes, then a wait."""
    web, _ = account(totp_url)
    _, codes = turn_on(web)
    for n in range(5):
        wrong = web.post("/account/totp/disable", json={"password": PASSWORD, "code": f"00000{n}"})
        assert wrong.status_code == 400, wrong.text
    held = web.post("/account/totp/disable", json={"password": PASSWORD, "code": codes[0]})
    assert held.status_code == 429 and held.json()["error"]["code"] == "totp_throttled", held.text
    web.close()


def test_the_pages(totp_url: str) -> None:
    web, address = account(totp_url)
    html = {"accept": "text/html"}
    form = {"accept": "text/html", "content-type": "application/x-www-form-urlencoded"}
    assert "is <strong>off</strong>" in web.get("/two-factor", headers=html).text
    started = web.post("/account/totp/setup", content=b"", headers=form)
    assert started.status_code == 200 and 'name="setup_token"' in started.text
    token = started.text.split('name="setup_token" value="', 1)[1].split('"', 1)[0]
    secret = started.text.split('<code class="secret">', 1)[1].split("<", 1)[0]
    wrong = web.post("/account/totp/enable", data={"setup_token": token, "code": "000000", "password": PASSWORD},
                     headers=html)
    assert wrong.status_code == 400 and secret in wrong.text  # the same set-up again, with the error
    done = web.post("/account/totp/enable", data={"setup_token": token, "code": pyotp.TOTP(secret).now(),
                                                  "password": PASSWORD}, headers=html)
    assert done.status_code == 201 and done.text.count("<li><code>") == 10
    with browser(totp_url) as phone:
        page = phone.post("/auth/login", data={"email": address, "password": PASSWORD}, headers=html)
        assert page.status_code == 401 and 'name="totp"' in page.text
        signed_in = phone.post("/auth/login", data={"email": address, "password": PASSWORD,
                                                    "totp": next_code(pyotp.TOTP(secret))}, headers=html)
        assert signed_in.status_code == 303
    web.close()
