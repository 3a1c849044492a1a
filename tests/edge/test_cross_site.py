"""Fetch Metadata both ways, over real HTTP (issue 21, findings 1 and 2): another site's page cannot get its
visitors banned, sign them in, or load our paths; a behavioural ban never refuses an established account's
own session or key."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import PASSWORD, default_policy_process

TOKEN = "admin-" + secrets.token_hex(16)
_hosts = itertools.count(10)
IMAGE = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors", "sec-fetch-dest": "image"}


@pytest.fixture(scope="module")
def url(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_DEFENSE_NEW_ACCOUNT_AGE": "0s"}
    with default_policy_process(tmp_path_factory.mktemp("cross"), model_url, "memory", env) as found:
        yield found


def client(url: str, **kwargs: object) -> httpx.Client:
    n = next(_hosts)
    return httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=f"127.22.0.{n}"),
                        **kwargs)  # type: ignore[arg-type]


def test_another_sites_images_cannot_get_a_visitor_banned(url: str) -> None:
    with client(url) as visitor:
        email = f"v-{secrets.token_hex(4)}@example.com"
        assert visitor.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        assert visitor.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
        for n in range(15):  # <img src="https://floodwall/missing-n"> on a hostile page: refused, never counted
            answer = visitor.get(f"/missing-{n}", headers=IMAGE)
            assert answer.status_code == 403 and answer.headers["x-floodwall-reason"] == "fetch-metadata/cross-site"
            assert answer.json()["error"]["code"] == "cross_site_request" and "retry-after" not in answer.headers
        assert visitor.get("/chat").status_code == 200  # not banned: the account and the address carry on
        link = visitor.get("/login", headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate",
                                              "sec-fetch-dest": "document"})
        assert link.status_code == 200  # a link from another site to a page is what links are for
        widget = visitor.get("/api/v2/status.json", headers={**IMAGE, "sec-fetch-mode": "cors"})
        assert widget.status_code == 200  # the status JSON is made to be read by other sites' widgets


@pytest.mark.parametrize("headers", [{"origin": "null"},
                                     {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"},
                                     {"sec-fetch-site": "same-site", "origin": "https://evil.example"}])
def test_a_cross_site_sign_in_is_refused(url: str, headers: dict[str, str]) -> None:
    with client(url) as victim:
        email = f"a-{secrets.token_hex(4)}@example.com"
        assert victim.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        victim.cookies.clear()
        form = {"email": email, "password": PASSWORD}
        answer = victim.post("/auth/login", data=form, headers=headers, follow_redirects=False)
        assert answer.status_code == 403  # a page saying so, for the browser
        assert answer.headers["x-floodwall-reason"] in ("cross_site_request", "fetch-metadata/cross-site")
        assert "fw_session" not in answer.headers.get("set-cookie", "")
        ours = victim.post("/auth/login", data=form, headers={"sec-fetch-site": "same-origin"}, follow_redirects=False)
        assert ours.status_code == 303 and "set-cookie" in ours.headers


def test_a_scanners_ban_does_not_refuse_an_established_account_behind_the_same_address(url: str) -> None:
    with client(url) as shared:
        email = f"e-{secrets.token_hex(4)}@example.com"
        assert shared.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        assert shared.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
        key = shared.post("/account/keys", json={"name": "k"}).json()["key"]
        session = shared.cookies.get("fw_session")
        shared.cookies.clear()
        for n in range(15):  # a scanner on the same address: banned for http-probing
            shared.get(f"/scan-{secrets.token_hex(3)}-{n}.php")
        banned = shared.get("/login")
        assert banned.status_code == 403 and banned.headers["x-floodwall-reason"] == "ban/http-probing"
        call = shared.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                           json={"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert call.status_code == 200, call.text
        shared.cookies.set("fw_session", session or "")
        assert shared.get("/chat").status_code == 200
        made_up = shared.get("/login", headers={"authorization": "Bearer fw_" + secrets.token_urlsafe(30)})
        assert made_up.status_code == 403  # a key nobody has buys nothing


def test_failed_console_sign_ins_are_limited_and_summarised(url: str) -> None:
    """Finding 6 of issue 21: a failed /admin/sign-in was a permanent audit row each, 600 a minute an address.
    Now 10 an address every 10 minutes, and one row for them."""
    address = f"127.22.1.{next(_hosts)}"
    with httpx.Client(base_url=url, timeout=30, headers={"sec-fetch-site": "same-origin"},
                      transport=httpx.HTTPTransport(local_address=address)) as guesser:
        statuses = [guesser.post("/admin/sign-in", data={"token": f"guess-{n}"}).status_code for n in range(13)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses
    with httpx.Client(base_url=url, timeout=30, headers={"sec-fetch-site": "same-origin", "accept": "application/json"},
                      transport=httpx.HTTPTransport(local_address=address)) as guesser:
        held = guesser.post("/admin/sign-in", data={"token": "one more"})
    assert held.status_code == 429 and held.headers["x-floodwall-reason"] == "console-sign-in"
    assert int(held.headers["retry-after"]) >= 1 and held.json()["error"]["code"] == "console_throttled"
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as operator:
        rows = operator.get("/admin/api/audit", params={"action": "console.sign_in_failed"}).json()["events"]
    assert len([row for row in rows if row["actor"] == f"admin@{address}"]) == 1, rows


def test_signing_out_of_the_console_ends_its_cookie_everywhere(url: str) -> None:
    """Finding 8 of issue 21: a console cookie copied before the sign-out opens nothing after it."""
    headers = {"sec-fetch-site": "same-origin"}
    with client(url, headers=headers) as console:
        signed = console.post("/admin/sign-in", data={"token": TOKEN}, follow_redirects=False)
        assert signed.status_code == 303
        copy = console.cookies.get("fw_console")
        assert copy and console.get("/admin/api/level").status_code == 200
        assert console.post("/admin/sign-out", follow_redirects=False).status_code == 303
    with client(url, headers=headers) as thief:
        thief.cookies.set("fw_console", copy)
        assert thief.get("/admin/api/level").status_code == 401
        assert "not the admin token" not in thief.get("/admin").text and "token" in thief.get("/admin").text
