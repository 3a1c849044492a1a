"""Text from outside is inert (issue 21, finding 7), over real HTTP on SQLite and PostgreSQL: e-mail addresses
and key names refuse control and format characters, a NUL never reaches the database (PostgreSQL refuses
one: it was a 500), user agents are stored without them, alerts quote a short summary, the CLI escapes."""

from __future__ import annotations

import json

import httpx
import pytest

from floodwall.accounts.alerts import summary
from floodwall.text import has_controls, inert, shown
from tests.conftest import PASSWORD, Account

ODD = ["\x00", "\x1b[31m", "\x07", "\u200b", "\u202e", "\u2028", "\u0085"]


@pytest.mark.parametrize("odd", ODD)
def test_addresses_with_control_characters_are_refused_or_unknown(http: httpx.Client, odd: str) -> None:
    body = json.dumps({"email": f"x{odd}y@example.com", "password": PASSWORD})  # escaped: a lone surrogate too
    headers = {"content-type": "application/json"}
    made = http.post("/auth/register", content=body, headers=headers)
    assert made.status_code == 400 and made.json()["error"]["code"] == "invalid_email", made.text
    signed = http.post("/auth/login", content=body, headers=headers)
    assert signed.status_code == 401, signed.text  # no such account: never a 500
    reset = http.post("/auth/password-reset", content=body, headers=headers)
    assert reset.status_code == 200, reset.text


@pytest.mark.parametrize("odd", ODD)
def test_key_names_with_control_characters_are_refused(account: Account, odd: str) -> None:
    made = account.web.post("/account/keys", content=json.dumps({"name": f"ci{odd}key"}),
                            headers={"content-type": "application/json"})
    assert made.status_code == 400 and made.json()["error"]["code"] == "invalid_name", made.text


def test_a_lone_surrogate_is_not_json(http: httpx.Client) -> None:
    body = json.dumps({"email": "x\ud800y@example.com", "password": PASSWORD})
    made = http.post("/auth/register", content=body, headers={"content-type": "application/json"})
    assert made.status_code == 400 and made.json()["error"]["code"] == "invalid_json"


def test_user_agents_are_stored_inert(account: Account) -> None:
    signed = account.web.post("/auth/login", json={"email": account.email, "password": PASSWORD},
                              headers={"user-agent": b"evil \x9b31m agent"})  # C1 CSI: HTTP lets 0x80-0xff through
    assert signed.status_code == 200, signed.text
    events = account.web.get("/account/activity").json()["events"]
    agents = [e.get("user_agent", "") for e in events]
    assert any("evil" in a for a in agents) and not any(has_controls(a) for a in agents), agents


def test_the_helpers() -> None:
    assert inert("a\x00b\u200bc") == "a\ufffdb\ufffdc" and inert("plain é") == "plain é"
    assert shown("e\x1b[2Jx\u202e") == "e\\x1b[2Jx\\u202e" and shown("naïve") == "naïve"
    assert summary("Mozilla/5.0 " + "A" * 500) == "Mozilla/5.0 " + "A" * 48 + "..."
    assert summary("") == "not given" and "\n" not in summary("line\nbreak\rhere")
