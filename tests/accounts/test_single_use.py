"""Single-use secrets are consumed atomically (issue 21, finding 9), over real HTTP on SQLite and PostgreSQL:
of many sign-ins racing with one recovery code, or many resets racing with one link, exactly one succeeds."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import pytest

from tests.accounts.conftest import Inbox, account, browser, link_in
from tests.accounts.test_two_factor import turn_on
from tests.conftest import PASSWORD, floodwall_process, postgres_database

RACERS = 8


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, inbox: tuple[Inbox, int], model_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("single-use")
    env = {"FLOODWALL_MAIL_URL": f"smtp://127.0.0.1:{inbox[1]}", "FLOODWALL_ACCOUNTS_KEY_CACHE_TTL": "0"}
    with postgres_database() if request.param == "postgresql" else _sqlite(tmp) as database, \
            floodwall_process(tmp, database, model_url, env=env) as found:
        yield found


class _sqlite:
    def __init__(self, tmp: object) -> None:
        self.url = f"sqlite:///{tmp}/floodwall.db"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        return None


def race(url: str, method: str, path: str, bodies: list[dict[str, str]]) -> list[int]:
    """Send each body at once, each from its own client; the statuses."""
    def one(body: dict[str, str]) -> int:
        with browser(url) as web:
            return web.request(method, path, json=body).status_code

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_one_recovery_code_signs_in_once_however_many_race(url: str) -> None:
    web, address = account(url)
    _, codes = turn_on(web)
    statuses = race(url, "POST", "/auth/login", [{"email": address, "password": PASSWORD, "totp": codes[0]}] * RACERS)
    assert statuses.count(200) == 1 and set(statuses) <= {200, 401, 429}, statuses


def test_one_reset_link_sets_a_password_once_however_many_race(url: str, inbox: tuple[Inbox, int]) -> None:
    _, address = account(url)
    with browser(url) as web:
        assert web.post("/auth/password-reset", json={"email": address}).status_code == 200
    [mail] = inbox[0].wait_for(address, subject="Reset your password")
    token = link_in(mail, "/auth/reset").split("token=", 1)[1]
    bodies = [{"token": token, "password": f"a new passphrase number {n}"} for n in range(RACERS)]
    statuses = race(url, "POST", "/auth/reset", bodies)
    assert statuses.count(200) == 1 and set(statuses) <= {200, 400}, statuses
