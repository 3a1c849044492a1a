"""Under attack, a right password from a device new to the account also needs a code mailed to the account
(the default policy's `[sign_in] new_device`), over real HTTP and real SMTP: the owner's known devices are
not asked, one message a window whatever the number of attempts, wrong codes are failed sign-ins."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.accounts.conftest import Inbox
from tests.conftest import PASSWORD, floodwall_process

TOKEN = "admin-" + secrets.token_hex(16)
SUBJECT = "Your sign-in code"


@pytest.fixture(scope="module")
def codes_url(inbox: tuple[Inbox, int], model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("sign-in-codes")
    env = {"FLOODWALL_MAIL_URL": f"smtp://127.0.0.1:{inbox[1]}", "FLOODWALL_EDGE_POLICY": "",
           "FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_DEFENSE_LEVEL": "normal"}
    with floodwall_process(tmp, f"sqlite:///{tmp / 'floodwall.db'}", model_url, env=env) as url:
        yield url


def set_level(url: str, level: str) -> None:
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}) as admin:
        assert admin.put("/admin/api/level", json={"level": level, "reason": "test"}).status_code == 200


def browser(url: str, n: int) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=f"127.31.0.{n}"),
                        headers={"user-agent": f"browser {n}"})


def sign_in(web: httpx.Client, email: str, **more: Any) -> httpx.Response:
    return web.post("/auth/login", json={"email": email, "password": PASSWORD, **more})


def code_in(inbox: Inbox, email: str) -> str:
    [mail] = inbox.wait_for(email, subject=SUBJECT)
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    found = re.search(r"Your code: (\d{6})", body.decode())
    assert found, body
    return found.group(1)


def test_new_devices_confirm_by_mail_under_attack(codes_url: str, inbox: tuple[Inbox, int]) -> None:
    email = f"owner-{secrets.token_hex(4)}@example.com"
    with browser(codes_url, 2) as own, browser(codes_url, 3) as new, browser(codes_url, 4) as other, \
            browser(codes_url, 5) as page:
        assert own.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        assert sign_in(own, email).status_code == 200
        set_level(codes_url, "under_attack")
        try:
            assert sign_in(own, email).status_code == 200  # a device the account has used: no code
            asked = sign_in(new, email)
            assert asked.status_code == 401 and asked.json()["error"]["code"] == "email_code_required"
            code = code_in(inbox[0], email)
            wrong = sign_in(new, email, email_code=str((int(code) + 1) % 10**6).zfill(6))
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_email_code"
            assert sign_in(new, email, email_code=code).status_code == 200
            assert sign_in(new, email).status_code == 200  # now a device the account knows
            # more new devices asking: no second message within the window, the same code works
            assert sign_in(other, email).json()["error"]["code"] == "email_code_required"
            assert len(inbox[0].wait_for(email, subject=SUBJECT)) == 1
            assert sign_in(other, email, email_code=code).status_code == 200
            form = page.post("/auth/login", data={"email": email, "password": PASSWORD},
                             headers={"accept": "text/html", "origin": codes_url})
            assert form.status_code == 401 and 'name="email_code"' in form.text
            # a wrong password is refused as ever, without a word about codes
            bad = page.post("/auth/login", json={"email": email, "password": "not the password"})
            assert bad.json()["error"]["code"] == "invalid_credentials"
        finally:
            set_level(codes_url, "normal")
        with browser(codes_url, 6) as calm:
            assert sign_in(calm, email).status_code == 200  # at normal a new device signs in


def test_any_code_with_a_right_password_tells_the_owner(codes_url: str, inbox: tuple[Inbox, int]) -> None:
    """A wave that always sends a code learns which passwords are right (as with GitHub's and Mastodon's
    device checks): the owner is mailed all the same. Codes typed in full width, or not digits, are read."""
    email = f"owner-{secrets.token_hex(4)}@example.com"
    with browser(codes_url, 7) as own, browser(codes_url, 8) as thief:
        assert own.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        set_level(codes_url, "under_attack")
        try:
            for guess in ("000000", "\uff11\uff12\uff13\uff14\uff15\uff16", "\u00e9"):  # 3 wrong: the limit
                answer = sign_in(thief, email, email_code=guess)
                assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_email_code", guess
            code = code_in(inbox[0], email)  # the first wrong code already mailed the owner
            full_width = "".join(chr(0xFF10 + int(d)) for d in code)
            assert sign_in(own, email).status_code == 200  # the owner's own browser needs no code
            with browser(codes_url, 9) as phone:
                assert sign_in(phone, email, email_code=full_width).status_code == 200
        finally:
            set_level(codes_url, "normal")


def test_devices_from_before_a_password_change_confirm_again(codes_url: str, inbox: tuple[Inbox, int]) -> None:
    """A thief who once had the password can mint known devices; after the owner changes it, those devices
    confirm by mail, and their wrong guesses count as a stranger's: they cannot spend the allowance of the
    devices the owner has signed in with since."""
    email, new_password = f"owner-{secrets.token_hex(4)}@example.com", "an entirely new passphrase"
    with browser(codes_url, 10) as own, browser(codes_url, 11) as thief, browser(codes_url, 12) as other_thief:
        assert own.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        assert sign_in(own, email).status_code == 200
        for device in (thief, other_thief):
            assert sign_in(device, email).status_code == 200  # at normal, with the leaked password
        changed = own.post("/account/password", json={"current_password": PASSWORD, "new_password": new_password},
                           headers={"origin": codes_url})
        assert changed.status_code == 200, changed.text
        assert own.post("/auth/login", json={"email": email, "password": new_password}).status_code == 200
        set_level(codes_url, "under_attack")
        try:
            for device in (thief, other_thief):
                for _ in range(10):
                    device.post("/auth/login", json={"email": email, "password": "a wrong guess"})
            again = thief.post("/auth/login", json={"email": email, "password": new_password})
            assert again.status_code in (401, 429)
            assert again.status_code == 429 or again.json()["error"]["code"] == "email_code_required"
            # the owner's browser signed in with the new password: not locked by the thief's guesses
            owner = own.post("/auth/login", json={"email": email, "password": new_password})
            assert owner.status_code == 200, (owner.headers.get("x-floodwall-reason"), owner.text)
        finally:
            set_level(codes_url, "normal")
