"""Account routes: /auth/* and /account/*. Each takes JSON (API clients) or a form post (the web app);
a form gets its page back with the error, JSON gets OpenAI-shaped errors.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from floodwall.accounts.auth import (
    check_same_origin,
    clear_session_cookie,
    require_session,
    session_principal,
    set_device_cookie,
    set_session_cookie,
)
from floodwall.accounts.guard import DEVICE_COOKIE
from floodwall.accounts.models import ApiKey
from floodwall.accounts.service import Client
from floodwall.accounts.waiting_room import TICKET_COOKIE, Place
from floodwall.bodies import check_json_content_type, parse_json_object, read_body
from floodwall.errors import REASON_HEADER, ApiError, log_refusal, wants_html
from floodwall.services import services
from floodwall.web.pages import render

FORM = "application/x-www-form-urlencoded"
MAX_FORM_BODY = 64 * 1024


def _is_form(request: Request) -> bool:
    """A web form post. curl -d sends JSON labelled as a form: the body decides, once read."""
    decided: bool | None = getattr(request.state, "form", None)
    if decided is not None:
        return decided
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM


async def _fields(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    raw = await read_body(request, MAX_FORM_BODY)
    request.state.form = _is_form(request) and not raw.lstrip().startswith(b"{")
    if allow_empty and not raw.strip():
        return {}
    if request.state.form:
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "The form could not be read.", "invalid_form") from None
    check_json_content_type(request.scope)
    return parse_json_object(raw)


def _text(fields: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = fields.get(name)
    if value is None or (value == "" and required):
        if required:
            raise ApiError(400, f"Missing required parameter: '{name}'.", "missing_parameter", param=name)
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid type for '{name}': expected a string.", "invalid_parameter", param=name)
    return value


Handler = Callable[[Request], Awaitable[Response]]


def _form_page(template: str) -> Callable[[Handler], Handler]:
    """Run a handler; when a web form posted and it refused, show the form again with the reason."""

    def wrap(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as error:
                if not _is_form(request) or error.status in (413, 429, 503):
                    raise
                log_refusal(request, error)
                context = {"error": error.message, "email": getattr(request.state, "email", "")}
                response = await render(request, template, context, status=error.status)
                response.headers[REASON_HEADER] = error.reason
                return response

        return endpoint

    return wrap


def _user_json(user_id: int, email: str) -> dict[str, Any]:
    return {"id": user_id, "email": email}


async def _credentials(request: Request, fields: dict[str, Any] | None = None) -> tuple[str, str]:
    fields = fields if fields is not None else await _fields(request)
    email = _text(fields, "email")
    request.state.email = email  # a refused form comes back with the address filled in
    return email, _text(fields, "password")


def _queued(request: Request) -> bool:
    config = services(request)
    return config.policy.registration_mode(config.control.level, config.control.registration) == "queued"


def _ticket(request: Request, fields: dict[str, Any]) -> str | None:
    ticket = fields.get("ticket")
    return ticket if isinstance(ticket, str) and ticket else request.cookies.get(TICKET_COOKIE)


async def _admitted(request: Request, fields: dict[str, Any], client: Client) -> Place | None:
    """In the `queued` mode, the admitted place this sign-up spends; otherwise the refusal saying where it
    stands in the queue (a first sign-up takes a number)."""
    if not _queued(request):
        return None
    room = services(request).waiting_room
    place = await room.place(_ticket(request, fields), client, join=True)
    assert place is not None  # joining always gives a place
    if place.admitted:
        if await room.use(place):
            return place
        place = await room.place(None, client, join=True)  # that ticket made an account already: a new number
        assert place is not None
    raise _queued_refusal(request, place)


def _queued_refusal(request: Request, place: Place) -> ApiError:
    minutes = "less than a minute" if place.eta_seconds < 60 else f"about {math.ceil(place.eta_seconds / 60)} minutes"
    return ApiError(
        429, f"Registration is busy because of high demand. You are in the queue: {place.position} ahead of you, "
        f"{minutes}. Send the ticket with your sign-up when your turn comes. Registered users can log in normally.",
        "registration_busy", retry_after=max(1, min(place.eta_seconds, 30)), reason="registration/queued",
        extra={"queue": place.json()}, headers={"set-cookie": _ticket_cookie(request, place)})


def _ticket_cookie(request: Request, place: Place) -> str:
    probe = Response()
    probe.set_cookie(TICKET_COOKIE, place.ticket, max_age=int(services(request).waiting_room.lifetime),
                     httponly=True, samesite="lax", secure=services(request).is_https(request), path="/")
    return probe.headers["set-cookie"]


async def register(request: Request) -> Response:
    try:
        return await _register(request)
    except ApiError as error:
        if error.reason != "registration/queued" or not _is_form(request):
            raise
        # a browser waits in the waiting room, which refreshes itself until its turn
        response = RedirectResponse("/auth/queue", status_code=303)
        response.headers.append("set-cookie", error.headers["set-cookie"])
        return response


async def queue(request: Request) -> Response:
    """The waiting room: GET says where a ticket stands (JSON, or a page that refreshes itself), POST takes a
    number (or says where the ticket held stands)."""
    config = services(request)
    client = config.client(request)
    fields = await _fields(request, allow_empty=True) if request.method == "POST" else dict(request.query_params)
    queued = _queued(request)
    place = await config.waiting_room.place(_ticket(request, fields), client, join=queued and request.method == "POST")
    mode = config.policy.registration_mode(config.control.level, config.control.registration)
    response: Response
    if request.method == "GET" and wants_html(request.scope):
        refresh = None if place is None or place.admitted else max(3, min(30, place.eta_seconds // 4))
        response = await render(request, "waiting.html", {
            "place": place, "queued": queued, "refresh": refresh,
            "use_within_minutes": round(config.waiting_room.use_within / 60)})
    elif _is_form(request):
        response = RedirectResponse("/auth/queue", status_code=303)
    else:
        response = JSONResponse({"registration": mode, "queue": place.json() if place else None})
    if place is not None:
        response.headers.append("set-cookie", _ticket_cookie(request, place))
    return response


@_form_page("register.html")
async def _register(request: Request) -> Response:
    fields = await _fields(request)
    email, password = await _credentials(request, fields)
    config = services(request)
    client = config.client(request)
    place = await _admitted(request, fields, client)
    try:
        user = await config.accounts.register(email, password, client)
    except ApiError:
        if place is not None:
            await config.waiting_room.give_back(place)
        raise
    response: Response
    if _is_form(request):
        # the web app signs the new user straight in, like most services do
        response = RedirectResponse("/chat", status_code=303)
        set_session_cookie(request, response, await config.accounts.create_session(user, client))
    else:
        response = JSONResponse({"user": _user_json(user.id, user.email), "verification_required": False}, 201)
    # the device that made the account is one its owner uses
    guard = config.guard
    set_device_cookie(request, response, guard.remember(guard.device(request.cookies.get(DEVICE_COOKIE)),
                                                        guard.login_ident(user.email)))
    return response


@_form_page("login.html")
async def login(request: Request) -> Response:
    email, password = await _credentials(request)
    config = services(request)
    client = config.client(request)
    # counted before the account is looked up or the password hashed: a flood of guesses costs counters only
    attempt = await config.guard.begin(email, client.ip, request.cookies.get(DEVICE_COOKIE))
    try:
        user = await config.accounts.authenticate(email, password, client, new_device=not attempt.known)
    except ApiError as error:
        if error.code == "invalid_credentials":
            config.guard.failed()
        else:
            await config.guard.release(attempt)
        raise
    device = await config.guard.succeeded(attempt)
    secret = await config.accounts.create_session(user, client)
    response: Response
    if _is_form(request):
        response = RedirectResponse("/chat", status_code=303)
    else:
        response = JSONResponse({"user": _user_json(user.id, user.email)})
    set_session_cookie(request, response, secret)
    set_device_cookie(request, response, device)
    return response


async def logout(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is not None:
        check_same_origin(request)
        config = services(request)
        await config.accounts.end_session(principal, config.client(request))
    response: Response = RedirectResponse("/", 303) if _is_form(request) else JSONResponse({"ok": True})
    clear_session_cookie(request, response)
    return response


def key_json(key: ApiKey, prompt_tokens: int = 0, completion_tokens: int = 0) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


@_form_page("keys.html")
async def create_key(request: Request) -> Response:
    principal = await require_session(request)
    fields = await _fields(request, allow_empty=True)
    name = _text(fields, "name", required=False).strip()
    config = services(request)
    key, secret = await config.accounts.create_key(principal, name, config.client(request))
    if _is_form(request):
        return await render(request, "keys.html", {"new_key": secret}, status=201)
    return JSONResponse({**key_json(key), "key": secret}, 201)


async def list_keys(request: Request) -> Response:
    principal = await require_session(request)
    keys = await services(request).accounts.list_keys(principal)
    return JSONResponse({"object": "list", "data": [key_json(*row) for row in keys]})


async def revoke_key(request: Request) -> Response:
    principal = await require_session(request)
    try:
        key_id = int(request.path_params["key_id"])
    except ValueError:
        raise ApiError(404, "No such API key.", "key_not_found", param="id") from None
    config = services(request)
    await config.accounts.revoke_key(principal, key_id, config.client(request))
    if _is_form(request):
        return RedirectResponse("/keys", status_code=303)
    return JSONResponse({"id": key_id, "revoked": True})


async def activity(request: Request) -> Response:
    principal = await require_session(request)
    events = await services(request).accounts.activity(principal)
    return JSONResponse({"events": [
        {"at": e.at.isoformat(), "kind": e.kind, "ip": e.ip, "user_agent": e.user_agent,
         "detail": e.detail_fields or None}
        for e in events
    ]})


async def usage(request: Request) -> Response:
    principal = await require_session(request)
    return JSONResponse(await services(request).accounts.usage_totals(principal))


@_form_page("password.html")
async def change_password(request: Request) -> Response:
    principal = await require_session(request)
    fields = await _fields(request)
    config = services(request)
    await config.accounts.change_password(principal, _text(fields, "current_password"),
                                          _text(fields, "new_password"), config.client(request))
    if _is_form(request):
        return await render(request, "password.html", {"done": True})
    return JSONResponse({"ok": True})


routes = [
    Route("/auth/register", register, methods=["POST"]),
    Route("/auth/login", login, methods=["POST"]),
    Route("/auth/logout", logout, methods=["POST"]),
    Route("/auth/queue", queue, methods=["GET", "POST"]),
    Route("/account/keys", create_key, methods=["POST"]),
    Route("/account/keys", list_keys, methods=["GET"]),
    Route("/account/keys/{key_id}", revoke_key, methods=["DELETE"]),
    Route("/account/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/account/activity", activity, methods=["GET"]),
    Route("/account/usage", usage, methods=["GET"]),
    Route("/account/password", change_password, methods=["POST"]),
]
