"""Reading request bodies safely: a size cap enforced while reading, and JSON errors as 4xx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from floodwall.config import ServerSettings
from floodwall.errors import ApiError


async def read_body(request: Request, limit: int) -> bytes:
    return await receive_body(request.scope, request.receive, limit)


async def receive_body(scope: Scope, receive: Receive, limit: int, within: float | None = None) -> bytes:
    """The body, read whole within `within` seconds (the app's server.body_timeout when not given)."""
    declared = header(scope, b"content-length")
    length = None
    if declared is not None:
        length = whole_number(declared)
        if length is None:
            raise ApiError(400, "Content-Length must be a non-negative integer.", "invalid_content_length")
        if length > limit:
            raise _too_large(limit)
        if header(scope, b"transfer-encoding") is not None:
            length = None  # framed by chunks, a Content-Length beside them says nothing of the end (h11)
    chunks: list[bytes] = []
    size = 0
    # the whole body arrives within the timeout, or the client is told so and its connection ends: a body
    # dribbled a byte a second holds nothing for long. One timer for the whole body, not asyncio.timeout
    # around each message: that cost some 18 µs a call (bench/edge.py latency, py-spy).
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    expired = False
    cancelling = task.cancelling()  # a cancel caught before and never undone is not this body's (asyncio.timeout)

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_at(loop.time() + (_body_timeout(scope) if within is None else within), expire)
    try:
        # chunked uploads have no Content-Length: count while reading so a huge body is never held
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            # the declared length is the body's end (HTTP/1.1 frames it so): the server's last, empty message
            # is not waited for, a hop through its I/O thread that cost granian some 100 µs a call
            if not message.get("more_body", False) or size == length:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except asyncio.CancelledError:
        # the timer's own cancel, and nobody else's (the client leaving, a shutdown): a 408
        if expired and task.uncancel() <= cancelling:
            raise ApiError(408, "The request body did not arrive in time.", "request_timeout",
                           headers={"connection": "close"}) from None
        raise
    finally:
        timer.cancel()


def _body_timeout(scope: Scope) -> float:
    """server.body_timeout, from the app's services (the default outside a floodwall app)."""
    services = getattr(getattr(scope.get("app"), "state", None), "services", None)
    settings = services.settings.server if services is not None else ServerSettings()
    return float(settings.body_timeout)


def whole_number(text: str) -> int | None:
    """A non-negative whole number of at most 18 ASCII digits, or None: str.isdigit() also takes '²', which
    int() refuses (a query or header carrying one was a 500), and int() refuses 4,300 digits or more."""
    return int(text) if len(text) <= 18 and text.isascii() and text.isdigit() else None


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _too_large(limit: int) -> ApiError:
    # the rest of the body is never read: the connection cannot carry another request
    return ApiError(413, f"Request body is larger than the limit of {limit} bytes.", "body_too_large",
                    headers={"connection": "close"})


def check_json_content_type(scope: Scope) -> None:
    content_type = (header(scope, b"content-type") or "application/json").split(";")[0].strip().lower()
    # curl -d sends form-encoded by default and some clients send text/plain: judge those by the body
    if content_type not in {"application/json", "", "text/plain", "application/x-www-form-urlencoded"} \
            and not content_type.endswith("+json"):
        raise ApiError(415, f"Expected a JSON body (Content-Type: application/json), got {content_type!r}.",
                       "unsupported_content_type")


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, or a 4xx that says what is wrong with it."""
    return await receive_json_object(request.scope, request.receive, limit)


async def receive_json_object(scope: Scope, receive: Receive, limit: int) -> dict[str, Any]:
    check_json_content_type(scope)
    return parse_json_object(await receive_body(scope, receive, limit))


# Objects and arrays, their members, and values, in one body: counted in C before parsing, because building
# a million small Python objects held the event loop for 0.6 s within the byte limit. Containers and members
# cost the most to build; plain values (token ids, strings) some 0.05 µs each. The counts include brackets,
# colons and commas inside strings, so they leave room for a prompt that quotes code or data, and the values
# for some 260,000 token ids (OpenAI takes 300,000 tokens an embeddings request).
MAX_JSON_CONTAINERS = 65_536
MAX_JSON_MEMBERS = 65_536
MAX_JSON_VALUES = 262_144


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise ApiError(400, "The request body is empty; expected a JSON object.", "invalid_json")
    # an overestimate (brackets and commas inside strings count too): a body near the limits that is not
    # one of these shapes is a very long text, which a client can send as one string
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_CONTAINERS or raw.count(b":") > MAX_JSON_MEMBERS or \
            raw.count(b",") >= MAX_JSON_VALUES:
        raise ApiError(400, f"The request body holds too many JSON values (at most {MAX_JSON_CONTAINERS:,} objects "
                       f"and arrays, {MAX_JSON_MEMBERS:,} members, {MAX_JSON_VALUES:,} values).", "invalid_json")
    try:
        # orjson: the /v1 hot path parses every body; it also refuses NaN and nesting beyond 1024 levels
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {_reason(exc)}.", "invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"Expected a JSON object, got {type(value).__name__}.", "invalid_json")
    return value


def _reason(exc: json.JSONDecodeError) -> str:
    if "recursion" in exc.msg.lower():
        return "it is nested too deeply"
    if "utf-8" in exc.msg.lower():
        return "it is not valid UTF-8"
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
