"""Two-factor sign-in routes: /account/totp (state), /account/totp/setup, /enable and /disable, as JSON for
API clients and as the /two-factor page's forms."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from floodwall.errors import ApiError
from floodwall.limits import Bucket
from floodwall.web.auth import require_session
from floodwall.web.forms import form_page, is_form, read_fields, text_field
from floodwall.web.pages import render
from floodwall.web.services import services

PAGE = "two_factor.html"
# wrong codes when turning two-factor off: this many an account in this many seconds
WRONG_CODES, WRONG_CODE_WINDOW = 5, 900.0


async def state(request: Request) -> Response:
    principal = await require_session(request)
    return JSONResponse({"enabled": await services(request).two_factor.enabled(principal.user_id)})


@form_page(PAGE)
async def setup(request: Request) -> Response:
    """A new secret for the owner's authenticator app (nothing is kept until `enable`)."""
    principal = await require_session(request)
    config = services(request)
    if await config.two_factor.enabled(principal.user_id):
        raise ApiError(409, "Two-factor sign-in is on already: turn it off first to use another app.",
                       "totp_enabled")
    started = config.two_factor.setup(principal.user_id, principal.email)
    if is_form(request):
        return await render(request, PAGE, {"enabled": False, "setup": started})
    return JSONResponse(started)


@form_page(PAGE)
async def enable(request: Request) -> Response:
    principal = await require_session(request)
    fields = await read_fields(request)
    token = text_field(fields, "setup_token")
    config = services(request)
    request.state.form_context = {"enabled": False, "setup": config.two_factor.reopen(principal.user_id, token)}
    # the owner proves it is them: a stolen session alone must not put its thief's authenticator on the account
    await config.accounts.check_password(principal, text_field(fields, "password"), param="password")
    client = config.client(request)
    codes = await config.two_factor.enable(principal.user_id, token, text_field(fields, "code"), client)
    if config.accounts.alerts:
        config.accounts.alerts.security_change(principal.email, "Two-factor sign-in turned on",
                                               "Two-factor sign-in was turned on for your account.", client)
    if is_form(request):
        return await render(request, PAGE, {"enabled": True, "recovery_codes": codes}, status=201)
    return JSONResponse({"enabled": True, "recovery_codes": codes}, 201)


@form_page(PAGE)
async def disable(request: Request) -> Response:
    principal = await require_session(request)
    fields = await read_fields(request)
    request.state.form_context = {"enabled": True}
    config = services(request)
    await config.accounts.check_password(principal, text_field(fields, "password"), param="password")
    client = config.client(request)
    # and the second factor itself (a code from the app, or a recovery code): the password alone is what
    # two-factor sign-in is there to not be enough. Wrong codes here are limited per account, and count
    # toward the owner's alert like wrong codes at sign-in
    wrong = Bucket("totp-wrong/account", principal.user_id, WRONG_CODE_WINDOW / WRONG_CODES, WRONG_CODE_WINDOW)
    waits = [v.retry_after for v in await config.store.peek([wrong]) if not v.allowed]
    if waits:
        raise ApiError(429, "Too many wrong codes: wait and try again.", "totp_throttled", retry_after=max(waits),
                       reason="totp-wrong/account")
    if not await config.two_factor.confirm(principal.user_id, text_field(fields, "code"), client):
        await config.store.charge([wrong])
        await config.accounts.wrong_code(principal.user_id, client)
        raise ApiError(400, "That code is not right, or it was used already: enter the code your app shows now, "
                       "or one of your recovery codes.", "invalid_totp", param="code")
    await config.two_factor.disable(principal.user_id, client)
    if config.accounts.alerts:
        config.accounts.alerts.security_change(principal.email, "Two-factor sign-in turned off",
                                               "Two-factor sign-in was turned off for your account.", client)
    if is_form(request):
        return await render(request, PAGE, {"enabled": False})
    return JSONResponse({"enabled": False})


routes = [
    Route("/account/totp", state, methods=["GET"]),
    Route("/account/totp/setup", setup, methods=["POST"]),
    Route("/account/totp/enable", enable, methods=["POST"]),
    Route("/account/totp/disable", disable, methods=["POST"]),
]
