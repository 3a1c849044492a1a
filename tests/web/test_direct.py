"""The hot path's fixed routes before Starlette's router: the same answers, errors included."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from floodwall.web.direct import Direct, fixed_routes
from floodwall.web.security_headers import SecurityHeaders


class Teapot(Exception):
    pass


class Endpoint:
    """A plain ASGI endpoint (Starlette wraps a function as a request-response one): answers, or raises before
    or after its answer began (by the query)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await answer(scope, send)


async def answer(scope: Scope, send: Send) -> None:
    query = scope["query_string"]
    if query == b"before":
        raise Teapot()
    if query == b"unhandled":
        raise KeyError("x")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    if query == b"after":
        raise Teapot()
    assert scope["app"] is APP  # the services are reached through the app, as under Starlette
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def page(request: Request) -> Response:
    return PlainTextResponse("page")


async def on_teapot(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "teapot"}, status_code=418)


endpoint = Endpoint()
ROUTES = [Route("/v1/call", endpoint, methods=["POST"]), Route("/page", page), Route("/other/{name}", endpoint)]
APP = Starlette(routes=ROUTES, exception_handlers={Teapot: on_teapot})


def test_only_plain_asgi_routes_at_fixed_paths_are_taken() -> None:
    assert fixed_routes(ROUTES) == {("/v1/call", "POST"): endpoint}  # not a request-response page, nor a pattern


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = SecurityHeaders(Direct(APP, fixed_routes(ROUTES)))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t")


async def test_the_answers_are_the_apps(client: httpx.AsyncClient) -> None:
    async with client:
        answer = await client.post("/v1/call")
        assert answer.status_code == 200 and answer.json() == {"ok": True}
        assert answer.headers["x-content-type-options"] == "nosniff"
        # another method, a trailing slash, another path: the app's router answers, as before
        assert (await client.get("/v1/call")).status_code == 405
        assert (await client.get("/page")).text == "page"
        assert (await client.post("/v1/call/")).status_code in (307, 404)
        # an error before the answer began: the app's handler for it
        teapot = await client.post("/v1/call?before")
        assert teapot.status_code == 418 and teapot.json() == {"error": "teapot"}
        assert teapot.headers["x-content-type-options"] == "nosniff"
        # an error with no handler, and one after the answer began, are the server's, as under Starlette
        assert (await client.post("/v1/call?unhandled")).status_code == 500
        broken = await client.post("/v1/call?after")
        assert broken.status_code == 200 and broken.content == b""


async def test_the_catch_all_handler_answers_then_the_server_sees_the_error() -> None:
    """As Starlette's outermost handler: the answer is the app's, and the error goes on to the server, which logs
    its traceback ("Internal error; it has been logged")."""
    async def on_anything(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "internal"}, status_code=500)

    app = Starlette(routes=ROUTES, exception_handlers={Teapot: on_teapot, Exception: on_anything})
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": "/v1/call", "query_string": b"unhandled", "headers": [],
             "root_path": "", "scheme": "http", "server": ("t", 80)}
    with pytest.raises(KeyError):
        await Direct(app, fixed_routes(ROUTES))(scope, receive, send)
    assert sent[0]["status"] == 500 and b"internal" in sent[1]["body"]  # type: ignore[operator]
    # a handled error is answered and ends there
    sent.clear()
    await Direct(app, fixed_routes(ROUTES))({**scope, "query_string": b"before"}, receive, send)
    assert sent[0]["status"] == 418
