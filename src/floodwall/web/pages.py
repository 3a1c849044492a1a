"""Rendering a page with what every page needs (the signed-in account, the service's state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from floodwall.web.services import services

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")


def templates() -> Jinja2Templates:
    found = Jinja2Templates(directory=str(TEMPLATES))
    found.env.auto_reload = False  # the templates ship in the package: no stat() of them for each page
    return found


async def render(request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200) -> Response:
    from floodwall.web.auth import session_principal  # deferred: auth needs services, pages are lower

    config = services(request)
    principal = context.get("principal") if context and "principal" in context else await session_principal(request)
    values = {"principal": principal, "simulated": config.upstream.simulated,
              "sign_up_challenge": config.challenge_difficulty() > 0,
              "unconfirmed": bool(principal and config.verification.required and not principal.email_verified),
              **(context or {})}
    response = config.templates.TemplateResponse(request, name, values, status_code=status)
    response.headers["cache-control"] = "no-store"
    return response


async def render_anonymous(request: Request, name: str) -> Response:
    """A page for a visitor who is not signed in: the same for every such visitor while the service's state
    is (a simulated model or not, a sign-up challenge or not), so it is rendered once per state and a flood
    of it costs a lookup, not a template."""
    config = services(request)
    key = (name, config.upstream.simulated, config.challenge_difficulty() > 0)
    body = config.anonymous_pages.get(key)
    if body is None:
        response = await render(request, name, {"principal": None})
        config.anonymous_pages[key] = bytes(response.body)
        return response
    return HTMLResponse(body, headers={"cache-control": "no-store"})
