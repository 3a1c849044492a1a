"""Reading request bodies safely: a size cap enforced while reading, and JSON errors as 4xx."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from floodwall.errors import ApiError


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length must be a non-negative integer.", "invalid_content_length")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    # chunked uploads have no Content-Length: count while reading so a huge body is never held
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    # the rest of the body is never read: the connection cannot carry another request
    return ApiError(413, f"Request body is larger than the limit of {limit} bytes.", "body_too_large",
                    headers={"connection": "close"})


def check_json_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    # curl -d sends form-encoded by default and some clients send text/plain: judge those by the body
    if content_type not in {"application/json", "", "text/plain", "application/x-www-form-urlencoded"} \
            and not content_type.endswith("+json"):
        raise ApiError(415, f"Expected a JSON body (Content-Type: application/json), got {content_type!r}.",
                       "unsupported_content_type")


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, or a 4xx that says what is wrong with it."""
    check_json_content_type(request)
    return parse_json_object(await read_body(request, limit))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise ApiError(400, "The request body is empty; expected a JSON object.", "invalid_json")
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not valid UTF-8.", "invalid_json") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
                       "invalid_json") from None
    except RecursionError:
        raise ApiError(400, "The request body is nested too deeply.", "invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"Expected a JSON object, got {type(value).__name__}.", "invalid_json")
    return value
