"""Page routes. Forms post to the /auth and /account routes, which answer browsers with pages."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from floodwall.accounts.alerts import RECENT
from floodwall.bodies import read_json_object
from floodwall.db.base import utcnow
from floodwall.errors import ApiError
from floodwall.inference import validation
from floodwall.web.api import call, screen
from floodwall.web.auth import require_session, require_verified, session_principal
from floodwall.web.pages import render, render_anonymous
from floodwall.web.services import services


async def home(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is not None:
        return RedirectResponse("/chat", 303)
    return await render_anonymous(request, "home.html")


async def register_page(request: Request) -> Response:
    return await render(request, "register.html")


async def login_page(request: Request) -> Response:
    return await render(request, "login.html")


async def forgot_page(request: Request) -> Response:
    return await render(request, "forgot.html")


async def chat_page(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is None:
        return RedirectResponse("/login", 303)
    config = services(request)
    try:
        models = await config.upstream.model_ids()
        unavailable = ""
    except ApiError as error:
        models, unavailable = [], error.message
    alerts = await config.accounts.activity(principal, limit=5, alerts_since=utcnow() - RECENT)
    return await render(request, "chat.html", {"principal": principal, "models": models,
                                                "unavailable": unavailable, "alerts": alerts})


async def keys_page(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is None:
        return RedirectResponse("/login", 303)
    keys = await services(request).accounts.list_keys(principal)
    return await render(request, "keys.html", {"principal": principal, "keys": keys})


async def activity_page(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is None:
        return RedirectResponse("/login", 303)
    config = services(request)
    events = await config.accounts.activity(principal)
    usage = await config.accounts.usage_totals(principal)
    sessions = await config.accounts.list_sessions(principal)
    alerts = [e for e in events if e.detail_fields.get("alert") is True and e.at >= utcnow() - RECENT]
    return await render(request, "activity.html", {"principal": principal, "events": events, "usage": usage,
                                                    "sessions": sessions, "alerts": alerts})


async def two_factor_page(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is None:
        return RedirectResponse("/login", 303)
    enabled = await services(request).two_factor.enabled(principal.user_id)
    return await render(request, "two_factor.html", {"principal": principal, "enabled": enabled})


async def password_page(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is None:
        return RedirectResponse("/login", 303)
    return await render(request, "password.html", {"principal": principal})


async def chat_send(request: Request) -> Response | ASGIApp:
    """The chat page's own streaming call: the signed-in session instead of an API key."""
    principal = await require_session(request)
    require_verified(request, principal)
    config = services(request)
    body = await read_json_object(request, config.settings.server.max_body_size)
    body["stream"] = True
    config.upstream.fields.apply("chat/completions", body)
    validation.chat_completion(body)
    aside = await screen(request.scope, principal, body)
    return call(request.scope, principal, "chat/completions", body, aside)


# the page a flood of the site hits: the app puts it early among its routes
HOME = Route("/", home)
routes = [
    Route("/register", register_page),
    Route("/login", login_page),
    Route("/forgot", forgot_page),
    Route("/chat", chat_page),
    Route("/keys", keys_page),
    Route("/activity", activity_page),
    Route("/two-factor", two_factor_page),
    Route("/password", password_page),
    Route("/app/chat", chat_send, methods=["POST"]),
]
