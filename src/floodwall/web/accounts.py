"""Account routes: /auth/* and /account/*. Each takes JSON (API clients) or a form post (the web app);
a form gets its page back with the error, JSON gets OpenAI-shaped errors. Sign-up lives in `signup`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from floodwall.accounts.guard import DEVICE_COOKIE
from floodwall.accounts.models import ApiKey, Session, User
from floodwall.edge.gate import edge_info
from floodwall.errors import ApiError, wants_html
from floodwall.limits import Bucket
from floodwall.principal import Principal
from floodwall.state.store import once, use_once
from floodwall.web.auth import (
    check_same_origin,
    clear_session_cookie,
    require_session,
    require_verified,
    session_principal,
    set_device_cookie,
    set_session_cookie,
)
from floodwall.web.forms import credentials, form_page, is_form, read_fields, text_field, user_json
from floodwall.web.pages import render
from floodwall.web.services import services
from floodwall.web.signup import challenge, queue, register, resend_verification, verify


@form_page("login.html")
async def login(request: Request) -> Response:
    fields = await read_fields(request)
    email, password = await credentials(request, fields)
    code = text_field(fields, "totp", required=False)
    email_code = text_field(fields, "email_code", required=False)
    verify_token = text_field(fields, "verify_token", required=False)
    config = services(request)
    client = config.client(request)
    # counted before the account is looked up or the password hashed: a flood of guesses costs counters only.
    # A good confirmation link for this address is held only by its owner: counted as a device of the
    # account's own, so strangers' wrong guesses cannot keep a new account from confirming
    edge = edge_info(request)
    vouched = config.verification.required and config.verification.vouches(verify_token, email)
    attempt = await config.guard.begin(email, client.ip, request.cookies.get(DEVICE_COOKIE),
                                       edge.tier if edge is not None else "unknown-device", vouched=vouched)
    confirm = None
    if config.policy.new_device[config.control.level] == "confirm":
        async def confirm(user: User) -> None:
            # a device is trusted to skip the code if it signed in with the present password
            if not (attempt.known and config.guard.current(attempt.device, attempt.login, user.password_hash)):
                await config.sign_in_codes.require(user.id, user.email, email_code, client)
    unconfirmed = None
    if config.verification.required:
        request.state.form_context = {"verify_token": verify_token}  # a refused form keeps the link's token

        async def unconfirmed(user: User) -> bool:
            linked = await config.verification.check(verify_token) if vouched else None
            if linked is not None and linked.id == user.id:
                return True
            # the right password, an address not confirmed: its link again, to the address (not to whoever asks)
            if await use_once(config.store, "mail/verify-sign-in", user.id, 600.0):
                config.verification.send(config.public_url(), user.id, user.email,
                                         "tried to sign in with this address before confirming it")
            return False
    try:
        user = await config.accounts.authenticate(email, password, client, new_device=not attempt.known,
                                                  second_factor=code, confirm_device=confirm, unconfirmed=unconfirmed)
    except ApiError as error:
        if error.code in ("invalid_credentials", "invalid_totp", "invalid_email_code"):
            config.guard.failed()  # a wrong code counts as a wrong password: its guesses are limited alike
            if error.code == "invalid_credentials" and attempt.known:
                await config.guard.failed_stale(attempt, await config.accounts.password_hash(email))
        else:
            await config.guard.release(attempt)
        context = getattr(request.state, "form_context", {})
        if error.code in ("totp_required", "invalid_totp"):
            request.state.form_context = {**context, "totp_needed": True}  # the form again, with the code's field
        elif error.code in ("email_code_required", "invalid_email_code"):
            request.state.form_context = {**context, "email_code_needed": True}
        raise
    device = await config.guard.succeeded(attempt, user.password_hash)
    secret = await config.accounts.create_session(user, client)
    response: Response
    if is_form(request):
        response = RedirectResponse("/chat", status_code=303)
    else:
        response = JSONResponse({"user": user_json(user.id, user.email)})
    set_session_cookie(request, response, secret)
    set_device_cookie(request, response, device)
    return response


async def logout(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is not None:
        check_same_origin(request)
        config = services(request)
        await config.accounts.end_session(principal, config.client(request))
    response: Response = RedirectResponse("/", 303) if is_form(request) else JSONResponse({"ok": True})
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


@form_page("keys.html")
async def create_key(request: Request) -> Response:
    principal = await require_session(request)
    require_verified(request, principal)
    fields = await read_fields(request, allow_empty=True)
    name = text_field(fields, "name", required=False).strip()
    config = services(request)
    key, secret = await config.accounts.create_key(principal, name, config.client(request))
    if is_form(request):
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
    if is_form(request):
        return RedirectResponse("/keys", status_code=303)
    return JSONResponse({"id": key_id, "revoked": True})


async def activity(request: Request) -> Response:
    principal = await require_session(request)
    events = await services(request).accounts.activity(principal)
    return JSONResponse({"events": [
        {"at": e.at.isoformat(), "kind": e.kind, "ip": e.ip, "user_agent": e.user_agent,
         "detail": e.detail_fields or None, "alert": e.detail_fields.get("alert") is True}
        for e in events
    ]})


def session_json(session: Session, principal: Principal) -> dict[str, Any]:
    return {"id": session.id, "created_at": session.created_at.isoformat(),
            "expires_at": session.expires_at.isoformat(), "ip": session.ip, "user_agent": session.user_agent,
            "current": session.id == principal.session_id}


async def list_sessions(request: Request) -> Response:
    principal = await require_session(request)
    sessions = await services(request).accounts.list_sessions(principal)
    return JSONResponse({"object": "list", "data": [session_json(s, principal) for s in sessions]})


async def revoke_sessions(request: Request) -> Response:
    """One session (/account/sessions/{id}), or every other one (/account/sessions/revoke-others)."""
    principal = await require_session(request)
    session_id: int | None = None
    if "session_id" in request.path_params:
        try:
            session_id = int(request.path_params["session_id"])
        except ValueError:
            raise ApiError(404, "No such session.", "session_not_found", param="id") from None
    config = services(request)
    count = await config.accounts.revoke_sessions(principal, config.client(request), session_id)
    if session_id is not None and not count:
        raise ApiError(404, "No such session (or it has ended already).", "session_not_found", param="id")
    if is_form(request):
        return RedirectResponse("/activity", status_code=303)
    return JSONResponse({"revoked": count})


async def usage(request: Request) -> Response:
    principal = await require_session(request)
    return JSONResponse(await services(request).accounts.usage_totals(principal))


@form_page("password.html")
async def change_password(request: Request) -> Response:
    principal = await require_session(request)
    fields = await read_fields(request)
    config = services(request)
    # devices that signed in with the old password (this one too: its cookie is kept for /auth) confirm anew
    # where the level asks new devices to; their next sign-in with the new password stamps them again
    await config.accounts.change_password(principal, text_field(fields, "current_password"),
                                          text_field(fields, "new_password"), config.client(request))
    if is_form(request):
        return await render(request, "password.html", {"done": True})
    return JSONResponse({"ok": True})


@form_page("forgot.html")
async def request_password_reset(request: Request) -> Response:
    """POST /auth/password-reset: the same answer whether or not an account has the address."""
    fields = await read_fields(request)
    email = text_field(fields, "email")
    request.state.email = email
    config = services(request)
    # one message a minute an address, and accounts.reset_mails_per_day a day: a script cannot fill an inbox
    recipient = config.signer.mac("reset", email.strip().lower())[:24]
    per_day = config.settings.accounts.reset_mails_per_day
    if all(v.allowed for v in await config.store.hit([once("mail/reset", recipient, 60.0),
                                                      Bucket("mail/reset-day", recipient, 86400.0 / per_day,
                                                             86400.0)])):
        await config.password_reset.request(config.public_url(), email, config.client(request))
    if is_form(request):
        return await render(request, "forgot.html", {"done": True})
    return JSONResponse({"ok": True, "message": "If an account has this address, a link to reset its password "
                         "is on its way."})


async def reset_page(request: Request) -> Response:
    """GET /auth/reset?token=...: the mailed link, a form to choose the new password."""
    token = request.query_params.get("token", "")
    await services(request).password_reset.check(token)
    if wants_html(request.scope):
        return await render(request, "reset.html", {"token": token})
    return JSONResponse({"valid": True})


@form_page("reset.html")
async def reset_password(request: Request) -> Response:
    fields = await read_fields(request)
    token = text_field(fields, "token")
    request.state.form_context = {"token": token}
    config = services(request)
    await config.password_reset.reset(token, text_field(fields, "password"), config.client(request))
    if is_form(request):
        return await render(request, "reset.html", {"done": True})
    return JSONResponse({"ok": True})


routes = [
    Route("/auth/register", register, methods=["POST"]),
    Route("/auth/login", login, methods=["POST"]),
    Route("/auth/logout", logout, methods=["POST"]),
    Route("/auth/queue", queue, methods=["GET", "POST"]),
    Route("/auth/challenge", challenge, methods=["GET"]),
    Route("/auth/verify", verify, methods=["GET"]),
    Route("/auth/verify/resend", resend_verification, methods=["POST"]),
    Route("/account/keys", create_key, methods=["POST"]),
    Route("/account/keys", list_keys, methods=["GET"]),
    Route("/account/keys/{key_id}", revoke_key, methods=["DELETE"]),
    Route("/account/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/auth/password-reset", request_password_reset, methods=["POST"]),
    Route("/auth/reset", reset_page, methods=["GET"]),
    Route("/auth/reset", reset_password, methods=["POST"]),
    Route("/account/activity", activity, methods=["GET"]),
    Route("/account/sessions", list_sessions, methods=["GET"]),
    Route("/account/sessions/revoke-others", revoke_sessions, methods=["POST"]),
    Route("/account/sessions/{session_id}", revoke_sessions, methods=["DELETE"]),
    Route("/account/sessions/{session_id}/revoke", revoke_sessions, methods=["POST"]),
    Route("/account/usage", usage, methods=["GET"]),
    Route("/account/password", change_password, methods=["POST"]),
]
