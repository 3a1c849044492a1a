"""E-mail confirmation against those who would hold an address that is not theirs (issue 21's review): an
account set up before confirmation was asked (its keys, its authenticator) loses all of it to the address's
owner with a password reset; strangers' wrong guesses do not keep a new account from confirming; a right
password before confirmation is no wrong password to alert on; and one link has one spelling."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from floodwall.db.signing import Signer
from tests.accounts.conftest import Inbox, browser, link_in
from tests.accounts.test_two_factor import turn_on
from tests.accounts.test_verification import (
    OWNERS,
    client,
    confirm,
    mail_url,
    new_account,
    reset_by_mail,
    serve,
    token_of,
)
from tests.conftest import PASSWORD

__all__ = ["mail_url"]  # the module's server with mail, shared with test_verification's tests
CHAT = {"model": "floodwall-simulated-chat", "messages": [{"role": "user", "content": "hi"}]}


def test_a_reset_takes_an_account_made_before_confirmation_from_whoever_set_it_up(
        model_url: str, tmp_path: Path, inbox: tuple[Inbox, int]) -> None:
    address = f"held-{secrets.token_hex(5)}@example.org"
    mail = f"smtp://127.0.0.1:{inbox[1]}"
    with serve(tmp_path, model_url, FLOODWALL_ACCOUNTS_VERIFY_EMAIL="false", FLOODWALL_MAIL_URL=mail) as url:
        squatter = client(url)  # confirmation was not asked yet: anyone could sign this address up
        assert squatter.post("/auth/register", json={"email": address, "password": PASSWORD}).status_code == 201
        assert squatter.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 200
        key = squatter.post("/account/keys", json={"name": "mine now"}).json()["key"]
        turn_on(squatter)
    with serve(tmp_path, model_url, FLOODWALL_MAIL_URL=mail) as url:
        bearer = {"authorization": f"Bearer {key}"}
        # unconfirmed, the key made then does not call the model
        refused = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=bearer, timeout=30)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "email_not_verified"
        # the password and a link without the second factor confirm nothing
        squatter = httpx.Client(base_url=url, timeout=30, headers={"origin": url}, cookies=squatter.cookies)
        assert squatter.post("/auth/verify/resend").json()["sent"] is True
        link = link_in(inbox[0].wait_for(address, subject="Confirm your e-mail address")[0], "/auth/verify")
        halfway = client(url).post("/auth/login", json={"email": address, "password": PASSWORD,
                                                        "verify_token": token_of(link)})
        assert halfway.status_code == 401 and halfway.json()["error"]["code"] == "totp_required"
        assert client(url).get(link).json()["email_verified"] is False
        # the address's owner resets the password: the link came to the address, which it confirms
        owner = reset_by_mail(url, address, inbox[0])
        gone = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=bearer, timeout=30)
        assert gone.status_code == 401, gone.text  # the squatter's key went with the password
        assert squatter.get("/account/keys").status_code == 401  # and their session
        signed_in = owner.post("/auth/login", json={"email": address, "password": OWNERS})
        assert signed_in.status_code == 200, signed_in.text  # no authenticator of the squatter's in the way
        events = owner.get("/account/activity").json()["events"]
        [confirmed] = [e for e in events if e["kind"] == "email_verified"]
        assert confirmed["detail"]["keys_revoked"] == 1 and confirmed["alert"] is True
        assert owner.get("/account/keys").json()["data"] == []


def test_strangers_wrong_guesses_do_not_keep_a_new_account_from_confirming(
        model_url: str, tmp_path: Path, inbox: tuple[Inbox, int]) -> None:
    with serve(tmp_path, model_url, FLOODWALL_MAIL_URL=f"smtp://127.0.0.1:{inbox[1]}", FLOODWALL_EDGE_POLICY="",
               FLOODWALL_DEFENSE_LEVEL="normal") as url:
        _, address = new_account(url)
        link = link_in(inbox[0].wait_for(address)[0], "/auth/verify")
        for _ in range(12):  # a dozen wrong guesses from a dozen networks
            with browser(url) as stranger:
                stranger.post("/auth/login", json={"email": address, "password": "a wrong guess"})
        owner = browser(url)
        held = owner.post("/auth/login", json={"email": address, "password": PASSWORD})
        assert held.status_code == 429, held.text  # the account's sign-ins are held, as they should be
        assert confirm(owner, address, link).status_code == 200  # but not the one the mailed link vouches for
        assert confirm(browser(url), address, link).status_code == 200  # confirmed: its password and any link


def test_a_right_password_before_confirmation_is_no_wrong_password(
        mail_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = new_account(mail_url)
    link = link_in(inbox[0].wait_for(address)[0], "/auth/verify")
    for _ in range(5):  # the owner, not yet confirmed, tries their right password again and again
        assert web.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 401
    assert web.post("/auth/login", json={"email": address, "password": "a typo"}).status_code == 401
    assert confirm(web, address, link).status_code == 200
    kinds = [e["kind"] for e in web.get("/account/activity").json()["events"]]
    assert kinds.count("login_failed") == 6 and "failed_logins" not in kinds  # no alert for one typo


def test_a_link_has_one_spelling(mail_url: str, inbox: tuple[Inbox, int]) -> None:
    web, address = new_account(mail_url)
    link = link_in(inbox[0].wait_for(address)[0], "/auth/verify")
    last = link[-1]
    for odd in (link + "=", link + "~~~", link + "\u202e", link[:-1] + ("B" if last != "B" else "C")):
        assert web.get(odd).status_code == 400, odd
        assert web.post("/auth/login", json={"email": address, "password": PASSWORD,
                                             "verify_token": token_of(odd)}).status_code == 401
    signer = Signer("k" * 32)
    token = signer.dumps("p", {"u": 1})
    assert signer.loads("p", token) == {"u": 1}
    assert [signer.loads("p", t) for t in (token + "=", token[:-1] + "\u00e9", " " + token)] == [None] * 3
