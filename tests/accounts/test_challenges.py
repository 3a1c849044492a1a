"""Proof-of-work challenges on sign-up, over real HTTP with memory and Redis state: asked when the level's
difficulty says so, solved the way ALTCHA's widget solves them, single use, bound to the client, and
tamper-proof; a hostile payload is a 403 with a fresh challenge, never a 500."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from floodwall.accounts.activity import Client
from floodwall.accounts.challenges import Challenges
from floodwall.db.signing import Signer
from floodwall.edge.policy import DEFAULT_POLICY
from floodwall.state.memory import MemoryStore
from tests.conftest import PASSWORD, default_policy_process, solve, solved_challenge

TOKEN = "admin-" + secrets.token_hex(16)
_networks = itertools.count(10)


@pytest.fixture(scope="module", params=["memory", "redis"])
def pow_url(request: pytest.FixtureRequest, model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("pow")
    # the default policy, asking a light challenge even at the normal level
    policy = DEFAULT_POLICY.read_text().replace("[registration.challenge]\nnormal = 0",
                                                "[registration.challenge]\nnormal = 2000")
    policy = policy.replace('queue = "30/1m burst 10"', 'queue = "60/1m burst 1"')  # for the queued test
    assert "normal = 2000" in policy and "burst 1\"" in policy
    (tmp / "policy.toml").write_text(policy)
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_EDGE_POLICY": str(tmp / "policy.toml")}
    with default_policy_process(tmp, model_url, request.param, env) as url:
        yield url


def visitor(base_url: str, host: int = 3, network: int | None = None, **kwargs: Any) -> httpx.Client:
    """A person from a network of their own (challenges are bound to the network and the browser)."""
    n = next(_networks) if network is None else network
    return httpx.Client(base_url=base_url, timeout=30, transport=httpx.HTTPTransport(
        local_address=f"127.5.{n}.{host}"), **kwargs)


def sign_up(web: httpx.Client, **extra: Any) -> httpx.Response:
    return web.post("/auth/register", json={"email": f"pow-{secrets.token_hex(5)}@example.com",
                                            "password": PASSWORD, **extra})


def refused(response: httpx.Response, why: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    assert response.headers["x-floodwall-reason"] == f"registration/challenge-{why}"
    error = response.json()["error"]
    assert error["code"] == "challenge_required" and error["param"] == "altcha"
    challenge: dict[str, Any] = error["challenge"]
    assert challenge["parameters"]["algorithm"] == "SHA-256" and challenge["signature"]
    return challenge


def test_a_sign_up_carries_a_solved_challenge_once(pow_url: str) -> None:
    with visitor(pow_url) as web:
        challenge = refused(sign_up(web), "missing")
        payload = solve(challenge)
        made = sign_up(web, altcha=payload)
        assert made.status_code == 201, made.text
        refused(sign_up(web, altcha=payload), "used")  # a solution makes one account
        fetched = web.get("/auth/challenge")  # what the widget asks for as the page loads
        assert fetched.status_code == 200 and fetched.headers["cache-control"] == "no-store"
        assert sign_up(web, altcha=solve(fetched.json())).status_code == 201


def test_a_challenge_serves_only_its_client(pow_url: str) -> None:
    network = next(_networks)
    with visitor(pow_url, network=network) as solver, visitor(pow_url) as elsewhere, \
            visitor(pow_url, host=4, network=network, headers={"user-agent": "another-browser/1"}) as neighbour, \
            visitor(pow_url, host=5, network=network) as same_browser_new_address:
        payload = solved_challenge(solver)
        refused(sign_up(elsewhere, altcha=payload), "other-client")
        refused(sign_up(neighbour, altcha=payload), "other-client")
        # the binding is the network and the browser: a phone that changes address within its carrier's
        # network keeps its solution
        assert sign_up(same_browser_new_address, altcha=payload).status_code == 201


def _edited(payload: str, change: Any) -> str:
    data = json.loads(base64.b64decode(payload))
    change(data)
    return base64.b64encode(json.dumps(data).encode()).decode()


@pytest.mark.parametrize("hostile", [
    "not base64 at all", "e30=", base64.b64encode(b"[1, 2]").decode(), "A" * 10_000, 12345, ["x"], {"a": 1},
    base64.b64encode(b'{"challenge": {"parameters": "x"}, "solution": {}}').decode(),
])
def test_hostile_payloads_are_refused_with_a_new_challenge(pow_url: str, hostile: Any) -> None:
    with visitor(pow_url) as web:
        refused(sign_up(web, altcha=hostile), "invalid")


def test_tampered_solutions_are_refused(pow_url: str) -> None:
    with visitor(pow_url) as web:
        payload = solved_challenge(web)

        def easier(data: dict[str, Any]) -> None:
            data["challenge"]["parameters"]["keyPrefix"] = "00"

        def wrong_key(data: dict[str, Any]) -> None:
            data["solution"]["derivedKey"] = "00" * 32

        def rebound(data: dict[str, Any]) -> None:
            data["challenge"]["parameters"]["data"]["b"] = "0" * 16

        for change in (easier, wrong_key, rebound):
            refused(sign_up(web, altcha=_edited(payload, change)), "invalid")
        assert sign_up(web, altcha=payload).status_code == 201


def test_the_page_solves_it_in_the_browser(pow_url: str) -> None:
    with visitor(pow_url) as web:
        page = web.get("/register", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert '<altcha-widget challenge="/auth/challenge" name="altcha"' in page.text
        script = web.get("/static/vendor/altcha.min.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert 'algorithms.set("SHA-256"' in script.text
        form = web.post("/auth/register", data={"email": "form-pow@example.com", "password": PASSWORD},
                        headers={"accept": "text/html"})
        assert form.status_code == 403 and form.headers["x-floodwall-reason"] == "registration/challenge-missing"
        assert "proof of work" in form.text and "<altcha-widget" in form.text
        solved = web.post("/auth/register", data={"email": "form-pow@example.com", "password": PASSWORD,
                                                   "altcha": solved_challenge(web)},
                          headers={"accept": "text/html"})
        assert solved.status_code == 303 and solved.headers["location"] == "/chat"


def test_the_operator_sees_the_difficulty(pow_url: str) -> None:
    state = httpx.get(f"{pow_url}/admin/api/registration", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert state["challenge"] == 2000
    assert state["challenge_by_level"] == {"normal": 2000, "elevated": 50000, "under_attack": 300000}


def test_a_solution_keeps_while_its_owner_waits_in_the_queue(pow_url: str) -> None:
    operator = httpx.Client(base_url=pow_url, headers={"authorization": f"Bearer {TOKEN}"})
    assert operator.put("/admin/api/registration", json={"mode": "queued", "reason": "test"}).status_code == 200
    try:
        with visitor(pow_url) as first, visitor(pow_url) as second:
            assert sign_up(first, altcha=solved_challenge(first)).status_code == 201
            payload = solved_challenge(second)
            waiting = sign_up(second, altcha=payload)
            assert waiting.status_code == 429 and waiting.headers["x-floodwall-reason"] == "registration/queued"
            ticket = waiting.json()["error"]["queue"]["ticket"]
            for _ in range(120):
                if second.get("/auth/queue", params={"ticket": ticket}).json()["queue"]["position"] == 0:
                    break
                time.sleep(0.25)
            made = sign_up(second, altcha=payload, ticket=ticket)
            assert made.status_code == 201, made.text
    finally:
        operator.put("/admin/api/registration", json={"mode": "auto", "reason": "test over"})
        operator.close()


def test_challenges_expire_and_serve_once() -> None:
    client = Client("127.0.0.9", "test-browser")
    fresh = Challenges(MemoryStore(), Signer("k" * 32))
    stale = Challenges(MemoryStore(), Signer("k" * 32), ttl=-1)
    why, nonce = fresh.check(solve(fresh.issue(client, 50)), client)
    assert why == "" and asyncio.run(fresh.spend(nonce)) and not asyncio.run(fresh.spend(nonce))
    assert stale.check(solve(stale.issue(client, 50)), client) == ("expired", "")
    assert fresh.check(solve(fresh.issue(client, 50)), Client("127.0.0.9", "other")) == ("other-client", "")
