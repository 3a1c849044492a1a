"""E-mail confirmation over real HTTP and real SMTP (an aiosmtpd server in the test process): the link a
new account is mailed, signing in with it (and not without it), resending, forged links, a mail server that
is down, the development mode that writes the link to the log, and that neither sign-up nor sign-in tells
whether an address has an account."""

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


def client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, headers={"origin": base_url})


def new_account(base_url: str) -> tuple[httpx.Client, str]:
    """A new account, not yet confirmed (so not signed in): a client and its address."""
    web = client(base_url)
    address = f"v-{secrets.token_hex(5)}@example.org"
    made = web.post("/auth/register", json={"email": address, "password": PASSWORD})
    assert made.status_code == 201, made.text
    assert made.json() == {"verification_required": True} and not made.cookies
    return web, address


def token_of(link: str) -> str:
    return link.split("token=", 1)[1]


def confirm(web: httpx.Client, address: str, link: str) -> httpx.Response:
    """Sign in from the mailed link: the password and the link's token."""
    return web.post("/auth/login", json={"email": address, "password": PASSWORD, "verify_token": token_of(link)})


def test_a_new_account_confirms_its_address_by_the_mailed_link(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = new_account(mail_url)
    [message] = inbox[0].wait_for(address)
    assert message["Subject"] == "Confirm your e-mail address"
    assert message["From"] == "Test service <noreply@example.org>"
    link = link_in(message, "/auth/verify")
    # looking at the link changes nothing (mail scanners open links): JSON says it is good, a browser gets the
    # sign-in form carrying its token
    assert web.get(link).json() == {"valid": True, "email_verified": False}
    page = web.get(link, headers={"accept": "text/html"})
    assert page.status_code == 200 and "Confirm your address" in page.text and address in page.text
    assert f'name="verify_token" value="{token_of(link)}"' in page.text
    # the token without the password, or the password without the token, signs nobody in
    wrong = web.post("/auth/login", json={"email": address, "password": "not the password",
                                          "verify_token": token_of(link)})
    assert wrong.status_code == 401 and not wrong.cookies
    assert web.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 401
    assert web.get(link).json()["email_verified"] is False
    signed_in = confirm(web, address, link)
    assert signed_in.status_code == 200 and signed_in.json()["user"]["email"] == address, signed_in.text
    assert web.get(link).json()["email_verified"] is True
    assert web.post("/account/keys", json={"name": "now"}).status_code == 201
    # confirmed, the password alone signs in; the link again is the sign-in form, saying so
    assert client(mail_url).post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 200
    again = web.get(link, headers={"accept": "text/html"})
    assert again.status_code == 200 and "is confirmed" in again.text and "verify_token" not in again.text
    kinds = [event["kind"] for event in web.get("/account/activity").json()["events"]]
    assert kinds.count("email_verified") == 1 and kinds.count("login") == 2
    assert [e["detail"] for e in web.get("/account/activity").json()["events"]
            if e["kind"] == "login_failed"] == [{"why": "unconfirmed"}, {"why": "wrong_password"}]  # newest first


def test_the_web_form_confirms_from_the_link(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = new_account(mail_url)
    link = link_in(inbox[0].wait_for(address)[0], "/auth/verify")
    html = {"accept": "text/html"}
    form = {"email": address, "password": "not the password", "verify_token": token_of(link)}
    refused = web.post("/auth/login", data=form, headers=html)
    # the form comes back with the error, still carrying the token
    assert refused.status_code == 401 and "Wrong e-mail or password" in refused.text
    assert f'name="verify_token" value="{token_of(link)}"' in refused.text
    done = web.post("/auth/login", data={**form, "password": PASSWORD}, headers=html, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/chat" and "fw_session" in done.cookies


def test_signing_in_unconfirmed_mails_the_link_again(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    """The right password for an unconfirmed account gets the wrong-password answer, and the link goes to the
    address (at most once in ten minutes)."""
    web, address = new_account(mail_url)
    inbox[0].wait_for(address)
    for _ in range(3):
        refused = web.post("/auth/login", json={"email": address, "password": PASSWORD})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_credentials"
        assert "address is not confirmed yet" in refused.json()["error"]["message"]
    second = inbox[0].wait_for(address, count=2)[1]
    assert "tried to sign in" in str(second.get_payload(decode=True))
    time.sleep(1)
    assert len(inbox[0].wait_for(address)) == 2
    assert confirm(web, address, link_in(second, "/auth/verify")).status_code == 200


OWNERS = "the owner's own long password"


def reset_by_mail(base_url: str, address: str, inbox: Inbox) -> httpx.Client:
    """The address's owner sets the password OWNERS with the mailed reset link: their client."""
    owner = client(base_url)
    assert owner.post("/auth/password-reset", json={"email": address}).status_code == 200
    reset = inbox.wait_for(address, subject="Reset your password")[0]
    assert owner.post("/auth/reset", json={"token": token_of(link_in(reset, "/auth/reset")),
                                           "password": OWNERS}).status_code == 200
    return owner


def test_a_password_reset_confirms_the_address(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    """The owner of an address that someone else signed up (a squatter who knows the password) takes it over by
    resetting the password: the reset link came to the address, so it confirms it."""
    squatter, address = new_account(mail_url)
    inbox[0].wait_for(address)
    owner = reset_by_mail(mail_url, address, inbox[0])
    assert owner.post("/auth/login", json={"email": address, "password": OWNERS}).status_code == 200
    assert owner.post("/account/keys", json={"name": "mine"}).status_code == 201
    assert squatter.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 401


def test_a_link_followed_by_the_address_owner_does_not_confirm_a_squatters_account(
        mail_url: str, inbox: tuple[Inbox, int]) -> None:
    """Account pre-hijacking: someone signs up an address not theirs; its owner follows the unasked-for link.
    Without the squatter's password nothing is confirmed, and the squatter, without the link, cannot sign in."""
    squatter, address = new_account(mail_url)
    link = link_in(inbox[0].wait_for(address)[0], "/auth/verify")
    owner = client(mail_url)
    for guess in ("the owner's own long password", ""):
        answer = owner.post("/auth/login", json={"email": address, "password": guess, "verify_token": token_of(link)})
        assert answer.status_code in (400, 401) and not answer.cookies
    assert owner.get(link).json()["email_verified"] is False
    assert squatter.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 401
    # a link made for another account confirms nothing here either
    other, other_address = new_account(mail_url)
    other_link = link_in(inbox[0].wait_for(other_address)[0], "/auth/verify")
    assert squatter.post("/auth/login", json={"email": address, "password": PASSWORD,
                                              "verify_token": token_of(other_link)}).status_code == 401
    assert owner.get(link).json()["email_verified"] is False and other.get(other_link).json()["email_verified"] is False


def test_forged_and_altered_links_are_refused(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = new_account(mail_url)
    link = link_in(inbox[0].wait_for(address)[0], "/auth/verify")
    for bad in (link[:-3] + "AAA", link.split("?")[0] + "?token=", link.split("?")[0], link + "&token=x" * 500):
        answer = web.get(bad)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_token", bad
        signed_in = web.post("/auth/login", json={"email": address, "password": PASSWORD,
                                                  "verify_token": bad.partition("token=")[2]})
        assert signed_in.status_code == 401, bad
    page = web.get(link[:-3] + "AAA", headers={"accept": "text/html"})
    assert page.status_code == 400 and "not valid" in page.text
    for odd in ({"verify_token": 7}, {"verify_token": ["x"]}, {"verify_token": "\u0000" * 2000},
                {"verify_token": "A" * 15_000}):
        answer = web.post("/auth/login", json={"email": address, "password": PASSWORD, **odd})
        assert answer.status_code in (400, 401), answer.text
    assert web.get(link).json()["email_verified"] is False


def test_the_link_is_sent_again_at_most_once_a_minute(model_url: str, tmp_path: Path,
                                                       inbox: tuple[Inbox, int]) -> None:
    """An account that signed in before confirmation was required (turned on later) keeps its session, is
    asked to confirm, and may have the link sent again."""
    address = f"old-{secrets.token_hex(5)}@example.org"
    with serve(tmp_path, model_url, FLOODWALL_ACCOUNTS_VERIFY_EMAIL="false",
               FLOODWALL_MAIL_URL=f"smtp://127.0.0.1:{inbox[1]}") as url:
        web = client(url)
        assert web.post("/auth/register", json={"email": address, "password": PASSWORD}).status_code == 201
        assert web.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 200
    with serve(tmp_path, model_url, FLOODWALL_MAIL_URL=f"smtp://127.0.0.1:{inbox[1]}") as url:
        web = httpx.Client(base_url=url, timeout=30, headers={"origin": url}, cookies=web.cookies)
        return _resend(url, web, address, inbox)


def _resend(mail_url: str, web: httpx.Client, address: str, inbox: tuple[Inbox, int]) -> None:
    assert web.post("/account/keys", json={"name": "early"}).json()["error"]["code"] == "email_not_verified"
    page = web.get("/chat", headers={"accept": "text/html"})
    assert "Confirm your e-mail address" in page.text and address in page.text
    resent = web.post("/auth/verify/resend")
    assert resent.status_code == 200 and resent.json() == {"email_verified": False, "sent": True}
    [message] = inbox[0].wait_for(address)
    too_soon = web.post("/auth/verify/resend")
    assert too_soon.status_code == 429 and too_soon.headers["x-floodwall-reason"] == "mail/verify"
    assert int(too_soon.headers["retry-after"]) >= 1
    assert httpx.post(f"{mail_url}/auth/verify/resend").status_code == 401  # signed in only
    assert confirm(web, address, link_in(message, "/auth/verify")).status_code == 200
    assert web.post("/account/keys", json={"name": "now"}).status_code == 201


def test_a_mail_server_that_is_down_costs_no_sign_up(model_url: str, tmp_path: Path) -> None:
    with serve(tmp_path, model_url, FLOODWALL_MAIL_URL=f"smtp://127.0.0.1:{free_port()}",
               FLOODWALL_MAIL_TIMEOUT="2s") as url:
        new_account(url)
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
        assert confirm(web, address, link).status_code == 200
        assert web.post("/account/keys", json={"name": "x"}).status_code == 201


def test_sign_up_does_not_say_whether_an_address_has_an_account(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    """Finding 5 of issue 21: with confirmation by mail, a taken address gets the answer a new one gets (201,
    no account id, no session or device cookie), and its owner is mailed instead."""
    owner, taken = new_account(mail_url)
    assert confirm(owner, taken, link_in(inbox[0].wait_for(taken)[0], "/auth/verify")).status_code == 200
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


def test_sign_up_then_sign_in_does_not_say_whether_an_address_has_an_account(
        mail_url: str, inbox: tuple[Inbox, int]) -> None:
    """The gap issue 21 left: sign up with a password of one's own, then sign in with it. A new address (the
    account just made, unconfirmed) and a taken one (someone else's password) get the same answers."""
    owner, taken = new_account(mail_url)
    assert confirm(owner, taken, link_in(inbox[0].wait_for(taken)[0], "/auth/verify")).status_code == 200
    fresh = f"n-{secrets.token_hex(5)}@example.org"
    answers = []
    for address in (taken, fresh):
        with client(mail_url) as web:
            made = web.post("/auth/register", json={"email": address, "password": "the prober's password"})
            tried = web.post("/auth/login", json={"email": address, "password": "the prober's password"})
            page = web.post("/auth/login", data={"email": address, "password": "the prober's password"},
                            headers={"accept": "text/html"})
            answers.append([(r.status_code, r.text.replace(address, "ADDRESS"), r.headers.get("x-floodwall-reason"),
                             sorted(r.cookies.keys()))
                            for r in (made, tried, page)])
    assert answers[0] == answers[1]
    assert answers[0][1][0] == 401
