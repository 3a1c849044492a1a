"""Refusals in one shape: OpenAI's error JSON (or a readable page for browsers), a reason code
in `X-Floodwall-Reason`, and `Retry-After` when waiting helps.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Scope, Send

from floodwall import logs

log = logging.getLogger("floodwall.errors")

REASON_HEADER = "x-floodwall-reason"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_TITLES = {
    400: "Bad request",
    401: "Sign-in needed",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported content type",
    429: "Too many requests",
    500: "Something went wrong",
    502: "The model server is unreachable",
    503: "Busy",
    504: "The model server took too long",
}


class ApiError(Exception):
    """A refusal or failure with everything needed to answer it; raised anywhere, answered once."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error")
        self.retry_after = retry_after
        self.reason = reason or code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.retry_after is not None:
            error["retry_after"] = _seconds(self.retry_after)
        error.update(self.extra)
        return {"error": error}


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def wants_html(scope: Scope) -> bool:
    """Browsers navigating to a page get HTML; API clients and scripts get JSON."""
    path: str = scope.get("path", "")
    if path.startswith(("/v1/", "/api/", "/admin/api/")) or path == "/v1":
        return False
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            return b"text/html" in value
    return False


_RENDERED: dict[tuple[int, str, str, str, int | None], tuple[list[tuple[bytes, bytes]], bytes]] = {}


async def send_error(scope: Scope, send: Send, error: ApiError) -> None:
    """Answer with the refusal straight onto the ASGI send: the edge's flood path, so the JSON and headers
    of each distinct refusal are rendered once and reused."""
    if wants_html(scope) or error.headers or error.extra:
        await error_response(scope, error)(scope, _no_receive, send)
        return
    retry = _seconds(error.retry_after) if error.retry_after is not None else None
    key = (error.status, error.code, error.reason, error.message, retry)
    rendered = _RENDERED.get(key)
    if rendered is None:
        body = json.dumps(error.body()).encode()
        headers = [(b"x-floodwall-reason", error.reason.encode()), (b"cache-control", b"no-store"),
                   (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry is not None:
            headers.append((b"retry-after", str(retry).encode()))
        if len(_RENDERED) > 4096:
            _RENDERED.clear()
        rendered = _RENDERED[key] = (headers, body)
    await send({"type": "http.response.start", "status": error.status, "headers": rendered[0]})
    await send({"type": "http.response.body", "body": rendered[1]})


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def error_response(scope: Scope, error: ApiError) -> Response:
    headers = {REASON_HEADER: error.reason, "cache-control": "no-store", **error.headers}
    if error.retry_after is not None:
        headers["retry-after"] = str(_seconds(error.retry_after))
    if wants_html(scope):
        return Response(_page(error), error.status, headers, media_type="text/html")
    return Response(json.dumps(error.body()), error.status, headers, media_type="application/json")


def _page(error: ApiError) -> str:
    title = html.escape(_TITLES.get(error.status, "Error"))
    wait = ""
    if error.retry_after is not None:
        wait = f"<p>Please wait about {_seconds(error.retry_after)} seconds and try again.</p>"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{title} · floodwall</title><link rel="stylesheet" href="/static/app.css"></head>'
        f'<body><main class="narrow"><h1>{title}</h1><p>{html.escape(error.message)}</p>{wait}'
        f'<p class="muted">Reason: <code>{html.escape(error.reason)}</code> · '
        '<a href="/">Home</a></p></main></body></html>'
    )


_HTTP_CODES = {
    404: ("Unknown route. The API lives under /v1; /openapi.json describes every route.", "not_found"),
    405: ("This route does not accept that method.", "method_not_allowed"),
}


def log_refusal(request: Request, error: ApiError) -> None:
    """Every refusal is explainable: the reason in the response header, and here in the log."""
    log_scope_refusal(request.scope, error)


# the routes' refusals, as the gate's own: a flood of wrong keys is not a log line a request
_REFUSALS = logs.RefusalLog(log)


def log_scope_refusal(scope: Scope, error: ApiError) -> None:
    """`address` is the client as the gate read it (behind a proxy, the forwarded one), else the socket's.
    The first refusal of each (reason, address) in a window is logged in full, the rest are counted in its
    summary line."""
    edge = scope.get("state", {}).get("edge")  # the gate's EdgeInfo (not imported: the gate imports this)
    client = scope.get("client")
    peer = client[0] if client else None
    address = getattr(edge, "address", None) or peer or "unknown"
    _REFUSALS.record(error.reason, address, error.status, getattr(edge, "klass", ""), getattr(edge, "level", ""),
                     getattr(edge, "tier", ""), scope.get("method", ""), scope.get("path", ""), peer=peer)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    log_refusal(request, exc)
    return error_response(request.scope, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message, code = _HTTP_CODES.get(exc.status_code, (str(exc.detail), "http_error"))
    if exc.status_code == 404:
        message = f"No route {request.method} {request.url.path}. " + message.split(". ", 1)[1]
    error = ApiError(exc.status_code, message, code, headers=exc.headers)
    log_refusal(request, error)
    return error_response(request.scope, error)


async def on_state_unavailable(request: Request, exc: Exception) -> Response:
    """Redis is away: what needs it (admin changes to bans, lists, the level) waits; nothing else does."""
    logs.event(log, "state_unavailable", logging.ERROR, path=request.url.path, error=repr(exc))
    error = ApiError(503, "The shared state store (Redis) is unreachable; try again shortly.",
                     "state_unavailable", retry_after=5)
    log_refusal(request, error)
    return error_response(request.scope, error)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    logs.event(log, "unhandled_error", logging.ERROR, path=request.url.path, error=repr(exc))
    log.debug("traceback", exc_info=exc)
    return error_response(
        request.scope, ApiError(500, "Internal error; it has been logged.", "internal_error")
    )
