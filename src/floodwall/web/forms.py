"""Reading what the web app's forms and API clients send to the account routes: a form post or JSON, the
same fields either way; a form that is refused gets its page back with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from floodwall.bodies import check_json_content_type, parse_json_object, read_body
from floodwall.errors import REASON_HEADER, ApiError, log_refusal
from floodwall.percent import form_pairs
from floodwall.web.auth import check_same_origin
from floodwall.web.pages import render

FORM = "application/x-www-form-urlencoded"
# the account and console forms are a few hundred bytes; a stray % sends a field to urllib's decoding loop,
# about 0.4 µs a character: 16 KiB bounds that near 1.5 ms (bench/adversarial.py)
MAX_FORM_BODY = 16 * 1024
MAX_FIELDS = 50


def is_form(request: Request) -> bool:
    """A web form post. curl -d sends JSON labelled as a form: the body decides, once read."""
    decided: bool | None = getattr(request.state, "form", None)
    if decided is not None:
        return decided
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM


async def read_fields(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    # every form post, signed in or not (log-in CSRF too), must come from our own pages when a browser says
    # where it comes from; API clients send no Origin and pass
    check_same_origin(request)
    raw = await read_body(request, MAX_FORM_BODY)
    request.state.form = is_form(request) and not raw.lstrip().startswith(b"{")
    if allow_empty and not raw.strip():
        return {}
    if request.state.form:
        try:
            pairs = form_pairs(raw.decode("utf-8"), MAX_FIELDS)
        except UnicodeDecodeError:
            pairs = None
        if pairs is None:
            raise ApiError(400, "The form could not be read.", "invalid_form")
        return dict(pairs)
    check_json_content_type(request.scope)
    return parse_json_object(raw)


def text_field(fields: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = fields.get(name)
    if value is None or (value == "" and required):
        if required:
            raise ApiError(400, f"Missing required parameter: '{name}'.", "missing_parameter", param=name)
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid type for '{name}': expected a string.", "invalid_parameter", param=name)
    return value


Handler = Callable[[Request], Awaitable[Response]]


def form_page(template: str) -> Callable[[Handler], Handler]:
    """Run a handler; when a web form posted and it refused, show the form again with the reason."""

    def wrap(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as error:
                if not is_form(request) or error.status in (413, 429, 503):
                    raise
                log_refusal(request, error)
                # what the page needs to be shown again (the e-mail typed, a reset link's token)
                context = {"error": error.message, "email": getattr(request.state, "email", ""),
                           **getattr(request.state, "form_context", {})}
                response = await render(request, template, context, status=error.status)
                response.headers[REASON_HEADER] = error.reason
                return response

        return endpoint

    return wrap


def user_json(user_id: int, email: str) -> dict[str, Any]:
    return {"id": user_id, "email": email}


async def credentials(request: Request, fields: dict[str, Any] | None = None) -> tuple[str, str]:
    fields = fields if fields is not None else await read_fields(request)
    email = text_field(fields, "email")
    request.state.email = email  # a refused form comes back with the address filled in
    return email, text_field(fields, "password")
