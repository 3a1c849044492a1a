"""Issue 19's findings, each over real HTTP against `floodwall serve` with the default policy: what the gate
reads before it decides cannot stall a worker, fail a request, or be chosen by the client.

Clients speak from their own loopback addresses; 127.0.0.2 stands in for the trusted proxy in front, which
writes X-Forwarded-For (and passes whatever else a client sent through, as nginx does).
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, default_policy_process, floodwall_process

TOKEN = "admin-" + secrets.token_hex(16)
PROXY = "127.0.0.2"
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def edge_url(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_SERVER_TRUSTED_PROXIES": f"{PROXY}/32"}
    with default_policy_process(tmp_path_factory.mktemp("request-path"), model_url, "memory", env) as url:
        yield url


def client_from(base_url: str, address: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=base_url, transport=httpx.HTTPTransport(local_address=address),
                        **{"timeout": 60, **kwargs})


def own_address() -> str:
    n = next(_numbers)
    return f"127.19.{n // 250}.{n % 250 + 2}"


def admin(base_url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with client_from(base_url, "127.0.0.1", headers={"authorization": f"Bearer {TOKEN}"}) as c:
        return c.request(method, path, **kwargs)


@pytest.fixture
def under_attack(edge_url: str) -> Iterator[None]:
    assert admin(edge_url, "PUT", "/admin/api/level", json={"level": "under_attack", "reason": "test"}).is_success
    yield
    assert admin(edge_url, "PUT", "/admin/api/level", json={"level": "normal", "reason": "test"}).is_success


# 1. backtracking: quotes between word characters; each pair more used to multiply the time by 2.6
@pytest.mark.parametrize("query", [
    "q=a" + "%27" * 60 + "!",
    "q=a" + "%22" * 60 + "!",
    "q=a" + "%27%22%5C%5E" * 30 + "!",
    "q=a" + "%27%27%22" * 40 + "%20",
])
def test_quotes_between_words_do_not_stall_a_worker(edge_url: str, query: str) -> None:
    healthz: list[int] = []

    def meanwhile() -> None:
        with httpx.Client(base_url=edge_url, timeout=30) as other:
            healthz.append(other.get("/healthz").status_code)

    with client_from(edge_url, own_address(), timeout=30) as c:  # the old pattern needed hours for this
        thread = threading.Thread(target=meanwhile)
        thread.start()
        response = c.get(f"/?{query}")
        thread.join()
    assert response.status_code < 500 and healthz == [200]


# 2. Range: a quadratic pattern on the whole header, and int() of more than 4,300 digits (a 500)
@pytest.mark.parametrize(("name", "value"), [
    ("range", "bytes=" + "9" * 5000 + "-1"),
    ("range", "bytes=1-" + "9" * 4400),
    ("request-range", "bytes=" + "1" * 12_000 + "-"),
    ("range", "bytes=" + "1-2," * 10_000),
    ("range", "bytes=" + "\u0663" * 10 + "-1"),  # digits that are not ASCII (sent as latin-1 bytes below)
])
def test_odd_ranges_are_an_anomaly_not_a_500(edge_url: str, name: str, value: str) -> None:
    with client_from(edge_url, own_address()) as c:
        response = c.get("/", headers={name: value.encode("utf-8")})
    assert response.status_code < 500, response.text


# 3. the client's own Forwarded header behind a proxy that writes X-Forwarded-For
def test_a_clients_forwarded_header_is_not_its_address(edge_url: str) -> None:
    with client_from(edge_url, PROXY) as proxy:
        claimed = proxy.get("/metrics", headers={"forwarded": "for=127.0.0.1", "x-forwarded-for": "203.0.113.9"})
        assert claimed.status_code == 401, "a client's Forwarded made it this machine"
        assert proxy.get("/metrics", headers={"x-forwarded-for": "127.0.0.1"}).status_code == 200
    described = admin(edge_url, "POST", "/admin/api/explain", json={"request": {
        "method": "GET", "path": "/", "address": "::ffff:203.0.113.9"}}).json()
    assert described["address"] == "203.0.113.9"  # the operator's question in the clients' one form


def test_the_scheme_is_the_proxys_not_the_clients(base_url: str) -> None:
    email = f"scheme-{secrets.token_hex(4)}@example.com"
    with client_from(base_url, PROXY) as proxy:
        assert proxy.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        for protos, secure in (("https, http", False), ("http, https", True), ("https", True)):
            response = proxy.post("/auth/login", json={"email": email, "password": PASSWORD},
                                  headers={"x-forwarded-for": "203.0.113.10", "x-forwarded-proto": protos})
            assert response.status_code == 200
            cookie = next(v for k, v in response.headers.multi_items()
                          if k == "set-cookie" and v.startswith("fw_session="))
            assert ("secure" in cookie.lower()) is secure, (protos, cookie)


# 5. rotating addresses inside one IPv6 /64 (the proxy forwards them: this machine has one IPv6 address)
def test_failed_sign_ins_from_one_ipv6_64_are_counted_together(edge_url: str) -> None:
    prefix = f"2001:db8:{next(_numbers):x}:1"
    codes = []
    with client_from(edge_url, PROXY) as proxy:
        for n in range(25):
            codes.append(proxy.post("/auth/login", headers={"x-forwarded-for": f"{prefix}::{n + 1:x}"},
                                    json={"email": f"nobody-{n}@example.com", "password": "wrong password"}))
    statuses = [r.status_code for r in codes]
    assert statuses[:20] == [401] * 20
    assert statuses[20] == 429 and codes[20].headers["x-floodwall-reason"] == "login-failures/ip"


def test_sign_ins_from_many_64s_of_one_48_meet_the_network_limit(edge_url: str, under_attack: None) -> None:
    prefix = f"2001:db8:{next(_numbers) + 100:x}"
    with client_from(edge_url, PROXY) as proxy:
        codes = [proxy.post("/auth/login", headers={"x-forwarded-for": f"{prefix}:{n:x}::1"},
                            json={"email": f"nobody-{n}@example.com", "password": "wrong password"})
                 for n in range(70)]
    refused = [r for r in codes if r.status_code == 429]
    assert refused and refused[0].headers["x-floodwall-reason"] == "login/network"


@pytest.mark.parametrize("headers", [
    {"referer": "http://["},  # urllib cannot split it: scoring once raised, and the request went on unscored
    {"x-pad": "a" * 5000},
])
def test_a_payload_is_not_hidden_by_what_the_scorer_cannot_read(edge_url: str, headers: dict[str, str]) -> None:
    payloads = [f"{n}' union select password from users--" for n in range(15)]
    with client_from(edge_url, own_address()) as c:
        statuses = [c.get("/", params={"q": payload}, headers=headers).status_code for payload in payloads]
    assert statuses[-1] == 403  # the address is banned for probing, as without the header


@pytest.mark.parametrize("padding", ["&" * 300, "a=1&" * 300, "a=" + "%20" * 1400 + "&"])
def test_padding_does_not_hide_payloads(edge_url: str, padding: str) -> None:
    """Past the caps (256 values, 512 characters) the rest is not read: that is flagged, named by what was
    not read, so a scanner's padded payloads still add up to a ban."""
    with client_from(edge_url, own_address()) as c:
        statuses = [c.get(f"/?{padding}q={n}'+union+select+password+from+users--").status_code for n in range(15)]
    assert statuses[-1] == 403


def test_a_fixed_decoy_does_not_make_payloads_one_step(edge_url: str) -> None:
    """A scanner that sends the same flagged value first with every request (a long header) still adds a
    step a payload: the probe watch counts everything that matched, not each rule's first match."""
    decoy = {"x-p102": "a" * 600}  # value-too-long: it sorted first and stood for the whole request
    with client_from(edge_url, own_address()) as c:
        statuses = [c.get(f"/?q={n}'+union+select+password+from+users--", headers=decoy).status_code
                    for n in range(15)]
    assert statuses[-1] == 403


@pytest.mark.parametrize("where", ["header", "cookie"])
def test_padding_in_a_named_value_does_not_make_payloads_one_step(edge_url: str, where: str) -> None:
    with client_from(edge_url, own_address()) as c:
        statuses = []
        for n in range(15):
            padded = "a" * 520 + f"{n}' union select password from users--"
            headers = {"x-api": padded} if where == "header" else {"cookie": f"sid={padded}"}
            statuses.append(c.get("/login", headers=headers).status_code)
    assert statuses[-1] == 403


def test_a_session_the_gate_did_not_read_signs_nobody_in(edge_url: str) -> None:
    """Routes see the account the gate found and limited by, not one a second reading of the cookie finds."""
    email = f"hidden-{secrets.token_hex(4)}@example.com"
    with client_from(edge_url, own_address()) as c:
        assert c.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        signed_in = c.post("/auth/login", json={"email": email, "password": PASSWORD})
        token = signed_in.cookies["fw_session"]
        c.cookies.clear()
        assert c.get("/account/keys", headers={"cookie": f"fw_session={token}"}).status_code == 200
        for hidden in (f'fw_session ="{token}"', f"fw_session={token}; " + "; ".join(
                f"x{n}=afw_session=1" for n in range(17))):
            assert c.get("/account/keys", headers={"cookie": hidden}).status_code == 401, hidden


def test_probing_from_one_ipv6_64_bans_the_64(edge_url: str) -> None:
    prefix = f"2001:db8:{next(_numbers):x}:2"
    with client_from(edge_url, PROXY) as proxy:
        for n in range(12):
            proxy.get(f"/missing-{n}", headers={"x-forwarded-for": f"{prefix}::{n + 1:x}"})
        refused = proxy.get("/", headers={"x-forwarded-for": f"{prefix}:abcd::1"})
        other = proxy.get("/", headers={"x-forwarded-for": f"2001:db8:{next(_numbers):x}:2::1"})
    assert refused.status_code == 403 and refused.headers["x-floodwall-reason"] == "ban/http-probing"
    assert other.status_code == 200
    bans = admin(edge_url, "GET", "/admin/api/bans").json()["bans"]
    assert f"{prefix}::/64" in {ban["target"] for ban in bans}


# 6. owners behind one shared address sign in from the devices they have used, whatever the wave spent
def test_known_devices_behind_a_shared_network_keep_signing_in(edge_url: str, under_attack: None) -> None:
    network = f"198.51.{next(_numbers)}"
    owners = []
    with client_from(edge_url, PROXY) as proxy:
        for n in range(3):
            email = f"owner-{secrets.token_hex(4)}@example.com"
            assert admin(edge_url, "PUT", "/admin/api/level", json={"level": "normal", "reason": "set-up"}).is_success
            created = proxy.post("/auth/register", json={"email": email, "password": PASSWORD},
                                 headers={"x-forwarded-for": f"10.{n}.0.1"})
            assert created.status_code == 201, created.text
            signed_in = proxy.post("/auth/login", json={"email": email, "password": PASSWORD},
                                   headers={"x-forwarded-for": f"{network}.{200 + n}"})
            assert signed_in.status_code == 200
            owners.append((email, signed_in.cookies["fw_device"]))
            proxy.cookies.clear()  # each owner has a browser of their own
        assert admin(edge_url, "PUT", "/admin/api/level", json={"level": "under_attack", "reason": "t"}).is_success
        # a wave from the same /24 spends its whole budget
        spent = [proxy.post("/auth/login", headers={"x-forwarded-for": f"{network}.{n % 150 + 1}"},
                            json={"email": f"x{n}@example.com", "password": "guess"}).status_code
                 for n in range(70)]
        assert 429 in spent
        stranger = proxy.post("/auth/login", json={"email": owners[0][0], "password": PASSWORD},
                              headers={"x-forwarded-for": f"{network}.250"})
        assert stranger.status_code == 429 and stranger.headers["x-floodwall-reason"] == "login/network"
        for email, device in owners:
            for address in (f"{network}.251", f"{network}.1"):  # .1: the very address the wave was refused at
                refused = proxy.post("/auth/login", headers={"x-forwarded-for": address},
                                     json={"email": "someone@example.com", "password": "guess"})
                assert refused.status_code == 429
                again = proxy.post("/auth/login", json={"email": email, "password": PASSWORD},
                                   headers={"x-forwarded-for": address, "cookie": f"fw_device={device}"})
                assert again.status_code == 200, again.text
                proxy.cookies.clear()
        # the cookie holds for the accounts it has signed in to, and for no other
        other = proxy.post("/auth/login", json={"email": owners[1][0], "password": PASSWORD},
                           headers={"x-forwarded-for": f"{network}.252", "cookie": f"fw_device={owners[0][1]}"})
        assert other.status_code == 429 and other.headers["x-floodwall-reason"] == "login/network"
        forged = proxy.post("/auth/login", json={"email": owners[0][0], "password": PASSWORD},
                            headers={"x-forwarded-for": f"{network}.253",
                                     "cookie": f"fw_device={owners[0][1][:-4]}AAAA"})
        assert forged.status_code == 429


def test_dual_stack_listening_sees_ipv4_clients_as_ipv4(model_url: str, tmp_path: Any) -> None:
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_EDGE_POLICY": ""}
    with floodwall_process(tmp_path, f"sqlite:///{tmp_path / 'fw.db'}", model_url, env=env,
                           args=("--host", "::")) as url:
        with client_from(url, "127.0.0.1") as local:
            assert local.get("/metrics").status_code == 200  # 127.0.0.1 is this machine, not ::ffff:127.0.0.1
        added = admin(url, "POST", "/admin/api/lists/deny", json={"cidr": "127.23.0.0/16", "reason": "test"})
        assert added.is_success, added.text
        with client_from(url, "127.23.0.5") as denied:
            response = denied.get("/")
        assert response.status_code == 403 and response.headers["x-floodwall-reason"] == "deny-list"
