"""Password reset over real HTTP and real SMTP: a mailed link, good once, that signs every session out; the
same answer for an address no account has; forged and used links refused; a weak new password refused
with the form kept."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.accounts.conftest import Inbox, account, browser, link_in
from tests.conftest import PASSWORD, floodwall_process

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture(scope="module")
def reset_url(inbox: tuple[Inbox, int], model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("reset")
    env = {"FLOODWALL_MAIL_URL": f"smtp://127.0.0.1:{inbox[1]}", "FLOODWALL_ACCOUNTS_KEY_CACHE_TTL": "0"}
    with floodwall_process(tmp, f"sqlite:///{tmp / 'floodwall.db'}", model_url, env=env) as url:
        yield url


def ask(web: httpx.Client, address: str) -> httpx.Response:
    answer = web.post("/auth/password-reset", json={"email": address})
    assert answer.status_code == 200, answer.text
    return answer


def test_a_mailed_link_sets_a_new_password_once_and_signs_everyone_out(reset_url: str,
                                                                      inbox: tuple[Inbox, int]) -> None:
    owner, address = account(reset_url)
    with browser(reset_url) as helper:
        assert helper.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 200
        ask(helper, address)
        [mail] = inbox[0].wait_for(address, subject="Reset your password")
        link = link_in(mail, "/auth/reset")
        token = link.split("token=", 1)[1]
        assert helper.get(link).json() == {"valid": True}
        done = helper.post("/auth/reset", json={"token": token, "password": NEW_PASSWORD})
        assert done.status_code == 200 and done.json() == {"ok": True}
        for signed_in in (owner, helper):
            assert signed_in.get("/account/keys").status_code == 401
        used = helper.post("/auth/reset", json={"token": token, "password": "yet another passphrase"})
        assert used.status_code == 400 and used.json()["error"]["code"] == "invalid_token"
        assert helper.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 401
        assert helper.post("/auth/login", json={"email": address, "password": NEW_PASSWORD}).status_code == 200
        inbox[0].wait_for(address, subject="Your password was changed")
        kinds = [e["kind"] for e in helper.get("/account/activity").json()["events"]]
        assert "password_reset" in kinds
    owner.close()


def test_an_unknown_address_gets_the_same_answer_and_no_mail(reset_url: str, inbox: tuple[Inbox, int]) -> None:
    with browser(reset_url) as web:
        _, known = account(reset_url)
        unknown = f"nobody-{secrets.token_hex(4)}@example.org"
        assert ask(web, unknown).json() == ask(web, known).json()
        ask(web, known)  # a second ask within the minute: the same answer, no second message
        inbox[0].wait_for(known)
        time.sleep(0.5)
        assert len([m for m in inbox[0].messages if m["To"] == known]) == 1
        assert not [m for m in inbox[0].messages if m["To"] == unknown]


def test_forged_links_and_weak_passwords_are_refused(reset_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = account(reset_url)
    ask(web, address)
    token = link_in(inbox[0].wait_for(address)[0], "/auth/reset").split("token=", 1)[1]
    for bad in (token[:-4] + "AAAA", "", "x" * 5000):
        refused = web.get("/auth/reset", params={"token": bad})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_token"
    page = web.get("/auth/reset", params={"token": token[:-4] + "AAAA"}, headers={"accept": "text/html"})
    assert page.status_code == 400 and "Ask for a new one" in page.text
    form = {"token": token, "password": "short"}
    weak = web.post("/auth/reset", data=form, headers={"accept": "text/html"})
    assert weak.status_code == 400 and f'value="{token}"' in weak.text  # the form comes back, link and all
    common = web.post("/auth/reset", json={"token": token, "password": "qwertyuiop"})
    assert common.status_code == 400 and common.json()["error"]["code"] == "password_too_common"
    assert web.post("/auth/reset", json={"token": token}).status_code == 400
    good = web.post("/auth/reset", data={"token": token, "password": NEW_PASSWORD}, headers={"accept": "text/html"})
    assert good.status_code == 200 and "Your password is changed" in good.text
    web.close()


def test_the_pages(reset_url: str) -> None:
    with browser(reset_url) as web:
        assert "Forgot your password?" in web.get("/login", headers={"accept": "text/html"}).text
        assert web.get("/forgot", headers={"accept": "text/html"}).status_code == 200
        sent = web.post("/auth/password-reset", data={"email": "someone@example.org"},
                        headers={"accept": "text/html"})
        assert sent.status_code == 200 and "is on its way" in sent.text


def test_a_forged_host_does_not_reach_the_mailed_link(reset_url: str, inbox: tuple[Inbox, int]) -> None:
    """Finding 3 of issue 21: links are built from server.public_url, never from the Host header."""
    _, address = account(reset_url)
    with httpx.Client(base_url=reset_url, timeout=30) as web:  # a script, not a browser: no Origin to check
        answer = web.post("/auth/password-reset", json={"email": address}, headers={"host": "attacker.example"})
        assert answer.status_code == 200, answer.text
    [mail] = inbox[0].wait_for(address, subject="Reset your password")
    assert link_in(mail, "/auth/reset").startswith(reset_url + "/auth/reset?token=")
    assert "attacker.example" not in str(mail)


def test_without_mail_the_logged_link_names_the_listening_address_not_the_host_header(
        model_url: str, tmp_path: Path) -> None:
    """In development (no mail.url, messages to the log) and no public_url, a link names where floodwall
    listens, never the Host a client sent."""
    env = {"FLOODWALL_SERVER_PUBLIC_URL": ""}
    with floodwall_process(tmp_path, f"sqlite:///{tmp_path / 'floodwall.db'}", model_url, env=env) as url:
        _, address = account(url)
        with httpx.Client(base_url=url, timeout=30) as web:
            answer = web.post("/auth/password-reset", json={"email": address}, headers={"host": "attacker.example"})
            assert answer.status_code == 200, answer.text
        log = next(tmp_path.glob("serve-*.log"))
        for _ in range(50):
            if "/auth/reset?token=" in log.read_text():
                break
            time.sleep(0.1)
        text = log.read_text()
    assert "/auth/reset?token=" in text and "attacker.example" not in text
    assert f"http://127.0.0.1:{url.rsplit(':', 1)[1]}/auth/reset?token=" in text


def test_reset_mail_to_one_address_is_capped_per_day(model_url: str, tmp_path: Path,
                                                     inbox: tuple[Inbox, int]) -> None:
    """Finding 10 of issue 21: one message a minute, and accounts.reset_mails_per_day a day (here 2). The
    state is in the real Redis, where the test clears the minute's bucket between asks (not the day's)."""
    prefix = f"fwtest-{secrets.token_hex(4)}:"
    env = {"FLOODWALL_MAIL_URL": f"smtp://127.0.0.1:{inbox[1]}", "FLOODWALL_ACCOUNTS_RESET_MAILS_PER_DAY": "2",
           "FLOODWALL_STATE_URL": f"redis://127.0.0.1:6379/0?prefix={prefix}"}
    store = redis.Redis()
    try:
        with floodwall_process(tmp_path, f"sqlite:///{tmp_path / 'floodwall.db'}", model_url, env=env) as url:
            _, address = account(url)
            with httpx.Client(base_url=url, timeout=30) as web:
                for asked in range(1, 5):
                    assert web.post("/auth/password-reset", json={"email": address}).status_code == 200
                    if asked == 1:  # the second within the minute: no message
                        assert web.post("/auth/password-reset", json={"email": address}).status_code == 200
                    minute = store.keys(f"{prefix}rl:mail/reset:*")  # none once the day's cap refuses
                    if minute:
                        store.delete(*minute)
            time.sleep(1.0)
        assert len(inbox[0].wait_for(address, count=2, subject="Reset your password")) == 2
        time.sleep(0.5)
        assert len([m for m in inbox[0].messages if m["To"] == address]) == 2
    finally:
        keys = store.keys(f"{prefix}*")
        if keys:
            store.delete(*keys)
        store.close()
