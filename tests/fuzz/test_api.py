"""The OpenAPI description covers every JSON route, and schemathesis, reading it from a live floodwall,
finds no 5xx: passes as a signed-in account with an API key, as the operator with the admin token, for the
call that ends the session, then signed out; a CI-sized number of cases each (FLOODWALL_FUZZ_API_EXAMPLES;
bench/fuzz.py --api runs them at length)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from floodwall.app import build_app
from floodwall.config import load
from floodwall.web.openapi import document
from tests.conftest import PASSWORD, floodwall_process

TOKEN = "admin-token-for-the-fuzzing-run-0123456789"
# served, but not JSON: pages, forms, the feed, metrics and the chat app's own form post
NOT_JSON = {*(f"GET {path}" for path in ("/", "/register", "/login", "/forgot", "/chat", "/keys", "/activity",
                                          "/two-factor", "/password", "/status", "/status/history.atom", "/admin",
                                          "/metrics", "/healthz", "/auth/reset", "/openapi.json")),
            "POST /admin/sign-in", "POST /admin/sign-out", "POST /app/chat"}
# the one call that ends the fuzzing session runs last, in a pass of its own (a password or two-factor
# change needs the current password or a setup token, which no generated case has)
ENDING = r"^/auth/logout$"
EXAMPLES = int(os.environ.get("FLOODWALL_FUZZ_API_EXAMPLES", "8"))
# below the suite's 120 s a test, so that a stuck pass fails with schemathesis's output; bench/fuzz.py lifts both
TIMEOUT = float(os.environ.get("FLOODWALL_FUZZ_API_TIMEOUT", "100"))


def served_operations(tmp_path: Path) -> set[str]:
    settings = load(environ={}, overrides={"database": {"url": f"sqlite:///{tmp_path / 'routes.db'}"}})
    app: object = build_app(settings)
    while not isinstance(app, Starlette):  # the Starlette app, within the gate and the layers before its router
        app = app.app  # type: ignore[attr-defined]
    found: set[str] = set()

    def walk(routes: list[object], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                if route.path != "/static":
                    walk(list(route.routes), prefix + route.path)
            elif isinstance(route, Route):
                path = re.sub(r"\{(\w+):\w+\}", r"{\1}", prefix + route.path)
                found.update(f"{method} {path}" for method in route.methods or () if method != "HEAD")

    walk(list(app.routes), "")  # type: ignore[attr-defined]
    return found


def test_every_json_route_is_described(tmp_path: Path) -> None:
    served = served_operations(tmp_path)
    described = {f"{method.upper()} {path}" for path, operations in document()["paths"].items()
                 for method in operations}
    assert served - NOT_JSON == described, (sorted(served - NOT_JSON - described), sorted(described - served))


@pytest.fixture(scope="module")
def live(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_DEFENSE_LEVEL": "normal"}
    with floodwall_process(tmp, f"sqlite:///{tmp / 'fuzz.db'}", model_url, env=env) as base, \
            httpx.Client(base_url=base, timeout=30) as web:
        web.post("/auth/register", json={"email": "fuzz@example.com", "password": PASSWORD}).raise_for_status()
        web.post("/auth/login", json={"email": "fuzz@example.com", "password": PASSWORD}).raise_for_status()
        key = web.post("/account/keys", json={"name": "fuzz"}).json()["key"]
        yield base, key, web.cookies["fw_session"]


def schemathesis(name: str, base: str, *args: str) -> str:
    command = shutil.which("schemathesis")
    assert command, "schemathesis is a test dependency"
    done = subprocess.run([command, "run", f"{base}/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", str(EXAMPLES), "--generation-deterministic", "--request-timeout", "30",
                           "--no-color", *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counted, done.stdout[-2000:]
    print(f"schemathesis {name}: {counted.group(0)}")  # bench/fuzz.py --api reads these
    return done.stdout


def test_no_5xx_for_a_signed_in_account(live: tuple[str, str, str]) -> None:
    base, key, session = live
    schemathesis("signed in", base, "-H", f"Authorization: Bearer {key}", "-H", f"Cookie: fw_session={session}",
                 "--exclude-path-regex", f"^/admin|{ENDING}")


def test_no_5xx_for_the_operator(live: tuple[str, str, str]) -> None:
    base, _, _ = live
    schemathesis("operator", base, "-H", f"Authorization: Bearer {TOKEN}", "--include-path-regex", "^/admin")


def test_no_5xx_for_calls_that_end_a_session(live: tuple[str, str, str]) -> None:
    base, _, session = live
    schemathesis("ending the session", base, "-H", f"Cookie: fw_session={session}", "--include-path-regex", ENDING,
                 "--phases", "coverage,fuzzing")
    schemathesis("signed out", base, "--exclude-path-regex", "^/admin")  # and everything, signed out


def test_numbers_in_other_scripts_are_refused_not_a_500(live: tuple[str, str, str]) -> None:
    base, _, _ = live
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=admin, timeout=30) as operator:
        # '²'.isdigit() is True and int('²') raises: both were 500s (schemathesis's first find)
        assert operator.get("/admin/api/users", params={"limit": "²"}).status_code == 400
        assert operator.get("/admin/api/audit", params={"limit": "9" * 5000}).status_code == 400
        refused = operator.post("/admin/api/incidents/²/updates", json={"status": "resolved", "body": "x"})
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "incident_not_found"
