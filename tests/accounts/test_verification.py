"""E-mail confirmation over real HTTP and real SMTP (an aiosmtpd server in the test process): the link a
new account is mailed, what an unconfirmed account may not do, resending, forged links, a mail server that
is down, and the development mode that writes the link to the log."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from floodwall.server import free_port
from tests.accounts.conftest import Inbox, link_in
from tests.conftest import PASSWORD, floodwall_process

LINK = re.compile(r"http://\S+/auth/verify\?token=\S+")


def serve(tmp: Path, model_url: str, **env: str) -> Any:
    base = {"FLOODWALL_ACCOUNTS_VERIFY_EMAIL": "true", "FLOODWALL_ACCOUNTS_KEY_CACHE_TTL": "0",
            "FLOODWALL_MAIL_FROM_ADDRESS": "Test service <noreply@example.org>"}
    return floodwall_process(tmp, f"sqlite:///{tmp / 'floodwall.db'}", model_url, env={**base, **env})


@pytest.fixture(scope="module")
def mail_url(inbox: tuple[Inbox, int], model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("mail"), model_url, FLOODWALL_MAIL_URL=f"smtp://127.0.0.1:{inbox[1]}") as url:
        yield url


def new_account(base_url: str) -> tuple[httpx.Client, str]:
    web = httpx.Client(base_url=base_url, timeout=30, headers={"origin": base_url})
    address = f"v-{secrets.token_hex(5)}@example.org"
    made = web.post("/auth/register", json={"email": address, "password": PASSWORD})
    assert made.status_code == 201, made.text
    assert made.json()["verification_required"] is True
    assert web.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 200
    return web, address


def test_a_new_account_confirms_its_address_by_the_mailed_link(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = new_account(mail_url)
    [message] = inbox[0].wait_for(address)
    assert message["Subject"] == "Confirm your e-mail address"
    assert message["From"] == "Test service <noreply@example.org>"
    # until then the account may sign in and look around, but not chat or make keys
    for refused in (web.post("/account/keys", json={"name": "early"}),
                    web.post("/app/chat", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "email_not_verified"
    page = web.get("/chat", headers={"accept": "text/html"})
    assert "Confirm your e-mail address" in page.text and address in page.text
    confirmed = web.get(link_in(message, "/auth/verify"))
    assert confirmed.status_code == 200 and confirmed.json()["email_verified"] is True
    assert web.post("/account/keys", json={"name": "now"}).status_code == 201
    again = web.get(link_in(message, "/auth/verify"), headers={"accept": "text/html"})  # a second click is harmless
    assert again.status_code == 200 and "is confirmed" in again.text
    kinds = [event["kind"] for event in web.get("/account/activity").json()["events"]]
    assert kinds.count("email_verified") == 1


def test_forged_and_altered_links_are_refused(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = new_account(mail_url)
    link = link_in(inbox[0].wait_for(address)[0], "/auth/verify")
    for bad in (link[:-3] + "AAA", link.split("?")[0] + "?token=", link.split("?")[0], link + "&token=x" * 500):
        answer = web.get(bad)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_token", bad
    page = web.get(link[:-3] + "AAA", headers={"accept": "text/html"})
    assert page.status_code == 400 and "not valid" in page.text
    assert web.post("/account/keys", json={"name": "still not"}).status_code == 403


def test_the_link_is_sent_again_at_most_once_a_minute(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = new_account(mail_url)
    inbox[0].wait_for(address)
    resent = web.post("/auth/verify/resend")
    assert resent.status_code == 200 and resent.json() == {"email_verified": False, "sent": True}
    second, third = inbox[0].wait_for(address, count=2)[:2]
    assert link_in(second, "/auth/verify") != "" and link_in(third, "/auth/verify") != ""
    too_soon = web.post("/auth/verify/resend")
    assert too_soon.status_code == 429 and too_soon.headers["x-floodwall-reason"] == "mail/verify"
    assert int(too_soon.headers["retry-after"]) >= 1
    assert httpx.post(f"{mail_url}/auth/verify/resend").status_code == 401  # signed in only


def test_a_mail_server_that_is_down_costs_no_sign_up(model_url: str, tmp_path: Path) -> None:
    with serve(tmp_path, model_url, FLOODWALL_MAIL_URL=f"smtp://127.0.0.1:{free_port()}",
               FLOODWALL_MAIL_TIMEOUT="2s") as url:
        web, _ = new_account(url)
        assert web.post("/account/keys", json={"name": "x"}).status_code == 403
        deadline = time.monotonic() + 15
        while "mail not sent" not in (tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log").read_text():
            assert time.monotonic() < deadline, "the failed delivery was not logged"
            time.sleep(0.1)


def test_development_mode_writes_the_link_to_the_log(model_url: str, tmp_path: Path) -> None:
    with serve(tmp_path, model_url) as url:
        web, address = new_account(url)
        log = tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log"
        deadline = time.monotonic() + 15
        while not (found := LINK.search(log.read_text())):
            assert time.monotonic() < deadline, "no link in the log"
            time.sleep(0.1)
        assert address in log.read_text()
        link = found.group(0).replace("\\n", " ").split()[0].rstrip('"\\')
        assert web.get(link).json()["email_verified"] is True
        assert web.post("/account/keys", json={"name": "x"}).status_code == 201


def test_sign_up_does_not_say_whether_an_address_has_an_account(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    """Finding 5 of issue 21: with confirmation by mail, a taken address gets the answer a new one gets (201,
    no account id, no session or device cookie), and its owner is mailed instead."""
    _, taken = new_account(mail_url)
    fresh = [f"n-{secrets.token_hex(5)}@example.org" for _ in range(2)]
    answers: dict[str, list[object]] = {"json": [], "form": []}
    for address, other in ((taken, taken), (fresh[0], fresh[1])):
        with httpx.Client(base_url=mail_url, timeout=30, headers={"origin": mail_url}) as web:
            made = web.post("/auth/register", json={"email": address, "password": PASSWORD})
            answers["json"].append((made.status_code, made.json(), sorted(made.cookies.keys())))
            page = web.post("/auth/register", data={"email": other, "password": PASSWORD},
                            headers={"accept": "text/html"})
            answers["form"].append((page.status_code, page.text, sorted(page.cookies.keys())))
    for kind, (for_taken, for_fresh) in answers.items():
        assert for_taken == for_fresh, (kind, for_taken, for_fresh)
    assert answers["json"][0] == (201, {"verification_required": True}, [])
    inbox[0].wait_for(taken, subject="Someone tried to sign up with your address")
    for address in fresh:
        inbox[0].wait_for(address, subject="Confirm your e-mail address")
