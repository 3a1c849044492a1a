"""The sign-up waiting room over real HTTP, its counters in memory and in the real Redis: first come first
served at the queue's pace, tickets that cannot be forged, moved, reused or used to jump ahead, and a page
that refreshes itself for browsers."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from floodwall.edge.policy import DEFAULT_POLICY
from tests.conftest import PASSWORD, default_policy_process

TOKEN = "admin-" + secrets.token_hex(16)
_networks = itertools.count(10)


@pytest.fixture(scope="module", params=["memory", "redis"])
def room_url(request: pytest.FixtureRequest, model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("room")
    # the default policy with a queue of one a second that lets two straight through when idle
    policy = DEFAULT_POLICY.read_text().replace('queue = "30/1m burst 10"', 'queue = "60/1m burst 2"')
    assert 'queue = "60/1m burst 2"' in policy
    (tmp / "policy.toml").write_text(policy)
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_EDGE_POLICY": str(tmp / "policy.toml")}
    with default_policy_process(tmp, model_url, request.param, env) as url:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}) as operator:
            pinned = operator.put("/admin/api/registration", json={"mode": "queued", "reason": "test"})
            assert pinned.status_code == 200, pinned.text
        yield url


def visitor(base_url: str, **kwargs: Any) -> httpx.Client:
    """A visitor from a network of its own (tickets are bound to the network and the browser)."""
    n = next(_networks)
    return httpx.Client(base_url=base_url, timeout=30, transport=httpx.HTTPTransport(
        local_address=f"127.4.{n}.3"), **kwargs)


def sign_up(web: httpx.Client, **extra: str) -> httpx.Response:
    return web.post("/auth/register", json={"email": f"q-{secrets.token_hex(5)}@example.com",
                                            "password": PASSWORD, **extra})


def queued(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert response.headers["x-floodwall-reason"] == "registration/queued"
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "registration_busy" and "Registered users can log in normally" in error["message"]
    assert "fw_ticket=" in response.headers["set-cookie"]
    place: dict[str, Any] = error["queue"]
    assert set(place) == {"ticket", "position", "eta_seconds"}
    return place


def wait_for_turn(web: httpx.Client, ticket: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = web.get("/auth/queue", params={"ticket": ticket}).json()
        assert answer["registration"] == "queued" and answer["queue"]["ticket"] == ticket
        if answer["queue"]["position"] == 0:
            return
        time.sleep(0.25)
    raise AssertionError("the queue never reached the ticket")


def drain(base_url: str) -> None:
    """Let the queue catch up with the numbers issued so far (so each test starts at an idle queue)."""
    with visitor(base_url) as probe:
        response = probe.post("/auth/queue", json={})
        ticket = response.json()["queue"]["ticket"]
        wait_for_turn(probe, ticket, timeout=60)


def test_first_come_first_served_at_the_queues_pace(room_url: str) -> None:
    drain(room_url)
    time.sleep(2)  # the idle queue regains its burst of two
    clients = [visitor(room_url) for _ in range(4)]
    try:
        # an idle queue lets the first ones straight through
        assert sign_up(clients[0]).status_code == 201
        assert sign_up(clients[1]).status_code == 201
        places = [queued(sign_up(web)) for web in clients[2:]]
        assert 1 <= places[0]["position"] < places[1]["position"]
        assert places[1]["eta_seconds"] >= places[0]["eta_seconds"]
        # the earlier number's turn comes first, and then it signs up with its ticket
        wait_for_turn(clients[2], places[0]["ticket"])
        later = clients[3].get("/auth/queue", params={"ticket": places[1]["ticket"]}).json()["queue"]
        assert later["position"] >= 1
        assert sign_up(clients[2], ticket=places[0]["ticket"]).status_code == 201
        wait_for_turn(clients[3], places[1]["ticket"])
        assert sign_up(clients[3]).status_code == 201  # the cookie carries the ticket too
    finally:
        for web in clients:
            web.close()


def crowd(base_url: str, people: int = 3) -> None:
    """Others take numbers: the queue's idle allowance (two) is used up and whoever comes next waits."""
    for _ in range(people):
        with visitor(base_url) as other:
            assert other.post("/auth/queue", json={}).status_code == 200


def test_a_ticket_is_single_use_bound_to_its_client_and_unforgeable(room_url: str) -> None:
    drain(room_url)
    with visitor(room_url) as holder, visitor(room_url) as thief:
        holder.post("/auth/queue", json={})
        ticket = holder.get("/auth/queue").json()["queue"]["ticket"]  # from the cookie
        wait_for_turn(holder, ticket)
        # another network and browser cannot use it: it gets a number of its own, at the back
        crowd(room_url)
        assert queued(sign_up(thief, ticket=ticket))["ticket"] != ticket
        forged = ticket[:-3] + ("xyz" if not ticket.endswith("xyz") else "abc")
        assert thief.get("/auth/queue", params={"ticket": forged}).json()["queue"] is None
        # a failed sign-up (a weak password) does not spend it
        weak = holder.post("/auth/register", json={"email": f"w-{secrets.token_hex(4)}@example.com",
                                                   "password": "short", "ticket": ticket})
        assert weak.status_code == 400
        assert sign_up(holder, ticket=ticket).status_code == 201
        # spent: a second account with it goes to the back of the queue
        crowd(room_url)
        assert queued(sign_up(holder, ticket=ticket))["ticket"] != ticket


def test_browsers_wait_on_a_page_that_refreshes_itself(room_url: str) -> None:
    drain(room_url)
    crowd(room_url)  # numbers ahead, so the browser must wait
    with visitor(room_url, headers={"accept": "text/html"}) as browser:
        form = browser.post("/auth/register", data={"email": f"b-{secrets.token_hex(4)}@example.com",
                                                    "password": PASSWORD})
        assert form.status_code == 303 and form.headers["location"] == "/auth/queue"
        page = browser.get("/auth/queue")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "You are in the queue" in page.text and 'http-equiv="refresh"' in page.text
        deadline = time.monotonic() + 30
        while "It is your turn" not in page.text and time.monotonic() < deadline:
            time.sleep(0.5)
            page = browser.get("/auth/queue")
        assert "It is your turn" in page.text and 'http-equiv="refresh"' not in page.text
        done = browser.post("/auth/register", data={"email": f"b2-{secrets.token_hex(4)}@example.com",
                                                    "password": PASSWORD})
        assert done.status_code == 303 and done.headers["location"] == "/chat"


def test_the_queue_answers_when_sign_ups_are_open(room_url: str) -> None:
    with httpx.Client(base_url=room_url, headers={"authorization": f"Bearer {TOKEN}"}) as operator:
        assert operator.put("/admin/api/registration", json={"mode": "open", "reason": "t"}).status_code == 200
        try:
            with visitor(room_url) as web:
                assert web.post("/auth/queue", json={}).json() == {"registration": "open", "queue": None}
                assert sign_up(web).status_code == 201
        finally:
            operator.put("/admin/api/registration", json={"mode": "queued", "reason": "t"})
