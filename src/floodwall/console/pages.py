"""The operator console at /admin: a sign-in with the admin token (a signed, HttpOnly, SameSite=Strict
cookie for 12 hours, ended by signing out or by rotating the token), then one page that reads and drives
the admin API."""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from floodwall.console.admin import (
    CONSOLE_COOKIE,
    CONSOLE_HEADER,
    CONSOLE_LIFETIME,
    console_ended,
    console_session,
    token_tag,
    who,
)
from floodwall.errors import ApiError
from floodwall.limits import Bucket
from floodwall.state.store import use_once
from floodwall.web.auth import check_same_origin
from floodwall.web.forms import read_fields, text_field
from floodwall.web.services import services


def _login_page(request: Request, error: str = "", status: int = 200) -> Response:
    return services(request).templates.TemplateResponse(request, "console_login.html", {"error": error},
                                                        status_code=status)


async def console(request: Request) -> Response:
    config = services(request)
    if not config.settings.admin.token:
        return _login_page(request, "The console is off: set FLOODWALL_ADMIN_TOKEN to turn it on.", 403)
    if not await console_session(request):
        return _login_page(request)
    return config.templates.TemplateResponse(request, "console.html", {"header": CONSOLE_HEADER},
                                             headers={"cache-control": "no-store"})


# failed console sign-ins: 10 an address and 50 a network every 10 minutes (a token of 32 characters or more
# is not guessed at that pace), and one audit row per address and window, however many there were
FAILURE_WINDOW = 600.0
FAILURES_PER_ADDRESS, FAILURES_PER_NETWORK = 10, 50


async def sign_in(request: Request) -> Response:
    config = services(request)
    fields = await read_fields(request)
    address = config.client(request).ip
    ip, network = config.networks.text_keys(address)
    failures = [Bucket("console-sign-in/ip", ip, FAILURE_WINDOW / FAILURES_PER_ADDRESS, FAILURE_WINDOW),
                Bucket("console-sign-in/network", network, FAILURE_WINDOW / FAILURES_PER_NETWORK, FAILURE_WINDOW)]
    waits = [v.retry_after for v in await config.store.peek(failures) if not v.allowed]
    if waits:
        raise ApiError(429, "Too many failed sign-ins to the console from your network. Please wait and try again.",
                       "console_throttled", retry_after=max(waits), reason="console-sign-in")
    given = text_field(fields, "token", required=False)
    token = config.settings.admin.token
    if not token or not given or not hmac.compare_digest(given.encode(), token.encode()):
        await config.store.charge(failures)
        if await use_once(config.store, "audit/console-sign-in-failed", address, FAILURE_WINDOW):
            config.control.audit.record(who(request), "console.sign_in_failed",
                                        note="the first in 10 minutes from this address; the rest are counted, "
                                             "not recorded")
        return _login_page(request, "That is not the admin token.", 401)
    config.control.audit.record(who(request), "console.sign_in")
    response = RedirectResponse("/admin", 303)
    session = {"t": token_tag(request), "i": secrets.token_urlsafe(12)}
    response.set_cookie(CONSOLE_COOKIE, config.signer.dumps("console", session),
                        max_age=CONSOLE_LIFETIME, path="/admin", httponly=True, samesite="strict",
                        secure=config.is_https(request))
    return response


async def sign_out(request: Request) -> Response:
    check_same_origin(request)
    config = services(request)
    found = config.signer.loads("console", request.cookies.get(CONSOLE_COOKIE, ""), max_age=CONSOLE_LIFETIME)
    if isinstance(found, dict) and found.get("i"):  # ended for whoever holds a copy of the cookie, too
        await config.store.hit([console_ended(str(found["i"]))])
        config.control.audit.record(who(request), "console.sign_out")
    response = RedirectResponse("/admin", 303)
    response.delete_cookie(CONSOLE_COOKIE, path="/admin")
    return response


routes = [
    Route("/admin", console, methods=["GET"]),
    Route("/admin/sign-in", sign_in, methods=["POST"]),
    Route("/admin/sign-out", sign_out, methods=["POST"]),
]
