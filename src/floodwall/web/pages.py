"""Rendering a page with what every page needs (the signed-in account, the service's state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from floodwall.web.services import services

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")


def templates() -> Jinja2Templates:
    return Jinja2Templates(directory=str(TEMPLATES))


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
