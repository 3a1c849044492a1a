"""The hot path's routes reached without Starlette's router and middleware: a plain ASGI endpoint at a fixed
path (the /v1 model calls) is looked up by its exact path and method; everything else goes to the app.

Measured in the granian worker (stage marks, 100 calls/s): from the gate's decision to the endpoint took
59 µs through Starlette's middleware and router, at the cold caches a call meets between others. An error
such an endpoint raises before its answer started gets the app's own exception handler, as in the app.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def fixed_routes(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], ASGIApp]:
    """(path, method) -> app for the routes that are plain ASGI apps (no request/response wrapping) at a path
    without parameters: what can be looked up without the router's patterns."""
    found: dict[tuple[str, str], ASGIApp] = {}
    for route in routes:
        if isinstance(route, Route) and not route.param_convertors and route.app is route.endpoint and \
                route.methods:
            for method in route.methods:
                found.setdefault((route.path, method), route.app)
    return found


class Direct:
    """`app` (a Starlette app), with `routes` taken before its router: each keyed by (path, method)."""

    def __init__(self, app: Any, routes: Mapping[tuple[str, str], ASGIApp]) -> None:
        self.app = app
        self.routes = dict(routes)
        self.handlers: Mapping[Any, Any] = getattr(app, "exception_handlers", {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.routes.get((scope["path"], scope["method"])) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # as Starlette sets it: the endpoints reach the services through it
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await endpoint(scope, receive, sending)
        except Exception as exc:
            kind = next((kind for kind in type(exc).__mro__ if kind in self.handlers), None)
            if started or kind is None:
                raise  # as under Starlette: an answer begun cannot become an error page
            response = await self.handlers[kind](Request(scope, receive), exc)
            await response(scope, receive, send)
            if kind is Exception:
                raise  # as Starlette's outermost handler: answered, then the server logs its traceback
