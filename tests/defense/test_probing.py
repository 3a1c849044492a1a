"""Behavioural probe detection: distinct missing paths from one address fill a leaky bucket and overflow
into a ban; retries, static files and established accounts do not; over real HTTP too."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from floodwall.config import ConfigError
from floodwall.defense.probing import Probes, ProbingPolicy
from tests.conftest import PASSWORD, Clock, default_policy_process

TOKEN = "admin-" + secrets.token_hex(16)


def test_distinct_missing_paths_overflow_and_retries_do_not() -> None:
    clock = Clock()
    probes = Probes(ProbingPolicy(capacity=10, leak=10.0), clock=clock)
    assert not any(probes.answered("192.0.2.1", "/favicon-missing") for _ in range(100))  # one path, again
    assert [probes.answered("192.0.2.2", f"/scan/{n}") for n in range(11)] == [False] * 10 + [True]
    for n in range(30):  # one new path every 10 s leaks as fast as it fills
        clock.now += 10.0
        assert not probes.answered("192.0.2.3", f"/slow/{n}")


def test_what_counts() -> None:
    probes = Probes(ProbingPolicy())
    assert probes.counts(404, "/wp-login.php") and probes.counts(403, "/.env")
    assert not probes.counts(404, "/static/app.JS") and not probes.counts(429, "/x") and not probes.counts(401, "/x")


def test_memory_stays_bounded() -> None:
    probes = Probes(ProbingPolicy(), max_addresses=100)
    for n in range(10_000):
        probes.answered(f"10.0.{n // 256}.{n % 256}", "/x")
    assert len(probes._buckets) <= 100


@pytest.mark.parametrize("data", [{"capacity": 0}, {"statuses": [200]}, {"leak": "soon"}, {"ignore": ".js"},
                                  {"bogus": 1}])
def test_bad_settings_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"\[probing\]"):
        ProbingPolicy.from_data(data, "[probing]")


@pytest.fixture(scope="module")
def served(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_DEFENSE_NEW_ACCOUNT_AGE": "0s"}
    with default_policy_process(tmp_path_factory.mktemp("probing"), model_url, "memory", env) as url:
        yield url


def client(base_url: str, address: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


def test_a_scanner_is_banned_and_its_neighbours_are_not(served: str) -> None:
    with client(served, "127.6.0.1") as scanner:
        answers = [scanner.get(path).status_code for path in
                   ("/.env", "/wp-login.php", "/admin.php", "/.git/config", "/phpmyadmin/", "/backup.zip",
                    "/config.json", "/server-status", "/xmlrpc.php", "/actuator/health", "/cgi-bin/test")]
        # 404s until the ban; paths that request scoring flags too (/.env, /.git/config) bring it sooner
        assert 403 in answers and set(answers[:answers.index(403)]) == {404}, answers
        banned = scanner.get("/")
        assert banned.status_code == 403 and banned.headers["x-floodwall-reason"] == "ban/http-probing"
        assert int(banned.headers["retry-after"]) > 200
    with client(served, "127.6.0.2") as neighbour:  # the same /24: only the address is banned
        assert neighbour.get("/").status_code == 200
    bans = httpx.get(f"{served}/admin/api/bans", headers={"authorization": f"Bearer {TOKEN}"}).json()["bans"]
    assert any(b["target"].startswith("127.6.0.1") and b["reason"] == "http-probing" for b in bans), bans


def test_a_page_missing_its_assets_is_not_a_scan(served: str) -> None:
    with client(served, "127.6.1.1") as browser:
        for n in range(30):
            assert browser.get(f"/static/missing-{n}.js").status_code == 404
            assert browser.get("/no-such-page").status_code == 404
        assert browser.get("/").status_code == 200


def test_established_accounts_are_not_counted(served: str) -> None:
    with client(served, "127.6.2.1") as member:
        email = f"m-{secrets.token_hex(4)}@example.com"
        assert member.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        assert member.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
        assert [member.get(f"/missing/{n}").status_code for n in range(15)] == [404] * 15
        assert member.get("/").status_code == 303  # not banned: on to the chat, as a member


def test_a_source_sending_attacks_is_banned_and_ordinary_queries_are_not_counted(served: str) -> None:
    with client(served, "127.6.3.1") as reader:  # many different searches: none scores, none counts
        assert [reader.get("/login", params={"q": f"how to bake bread, take {n}"}).status_code
                for n in range(11)] == [200] * 11
    with client(served, "127.6.4.1") as attacker:  # pages that exist, each with another payload
        answers = [attacker.get("/login", params={"next": f"<script>alert({n})</script>"}).status_code
                   for n in range(11)]
        assert answers == [200] * 11  # flagged, not refused: the default at every level
        banned = attacker.get("/login")
        assert banned.status_code == 403 and banned.headers["x-floodwall-reason"] == "ban/http-probing"
    with client(served, "127.6.3.1") as reader:
        assert reader.get("/login").status_code == 200


def test_an_odd_cookie_on_every_page_is_one_step_not_many(served: str) -> None:
    # a line break in a cookie's value is flagged; a browser sends it with every page it asks for
    with httpx.Client(base_url=served, timeout=30, cookies={"legacy": "a%0Ab"},
                      transport=httpx.HTTPTransport(local_address="127.6.5.1")) as browser:
        assert [browser.get("/login", params={"next": f"/page/{n}"}).status_code for n in range(11)] == [200] * 11
        assert browser.get("/login").status_code == 200  # not banned


def test_escapes_that_decode_to_half_a_character_are_read_not_a_crash(served: str) -> None:
    # request scoring decodes JavaScript's \u escapes; a lone surrogate must not reach RE2 (it reads UTF-8)
    with client(served, "127.6.6.1") as visitor:
        for query in ("q=%5Cud83d", "q=%5Cud83d%5Cude00", "q=%5Cudfff%5Cx3cscript%3E", '{"a": "\\ud800"}'):
            assert visitor.get("/login", params={"next": query}).status_code == 200, query
        body = b'{"email": "\\ud800@example.com", "password": "\\udfff\\udfff\\udfff\\udfff"}'  # JSON's escapes
        answer = visitor.post("/auth/login", content=body, headers={"content-type": "application/json"})
        assert answer.status_code in (400, 401, 429), answer.text
