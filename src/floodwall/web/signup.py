"""Sign-up: POST /auth/register, and what stands before it when the level asks: the waiting room
(/auth/queue) and the proof-of-work challenge (/auth/challenge), checked before the queue and spent as
the account is made.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from floodwall.accounts.activity import Client
from floodwall.accounts.challenges import FIELD
from floodwall.accounts.guard import DEVICE_COOKIE
from floodwall.accounts.waiting_room import TICKET_COOKIE, Place
from floodwall.errors import ApiError, wants_html
from floodwall.state.store import use_once
from floodwall.web.auth import require_session, set_device_cookie, set_session_cookie
from floodwall.web.forms import credentials, form_page, is_form, read_fields, user_json
from floodwall.web.pages import render
from floodwall.web.services import services


def _queued(request: Request) -> bool:
    return services(request).registration_mode() == "queued"


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
        if error.reason != "registration/queued" or not is_form(request):
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
    fields = await read_fields(request, allow_empty=True) if request.method == "POST" else dict(request.query_params)
    queued = _queued(request)
    place = await config.waiting_room.place(_ticket(request, fields), client, join=queued and request.method == "POST")
    mode = config.registration_mode()
    response: Response
    if request.method == "GET" and wants_html(request.scope):
        refresh = None if place is None or place.admitted else max(3, min(30, place.eta_seconds // 4))
        response = await render(request, "waiting.html", {
            "place": place, "queued": queued, "refresh": refresh,
            "use_within_minutes": round(config.waiting_room.use_within / 60)})
    elif is_form(request):
        response = RedirectResponse("/auth/queue", status_code=303)
    else:
        response = JSONResponse({"registration": mode, "queue": place.json() if place else None})
    if place is not None:
        response.headers.append("set-cookie", _ticket_cookie(request, place))
    return response


def _challenged(request: Request, fields: dict[str, Any], client: Client) -> str:
    """When the level asks for proof of work, the sign-up must carry a solution to a challenge this client
    was given: its nonce ("" when none is asked); without one the refusal carries a new challenge."""
    config = services(request)
    difficulty = config.challenge_difficulty()
    if not difficulty:
        return ""
    why, nonce = config.challenges.check(fields.get(FIELD), client)
    if why:
        raise _challenge_refusal(request, client, why)
    return nonce


def _challenge_refusal(request: Request, client: Client, why: str) -> ApiError:
    config = services(request)
    message = ("Sign-ups need a small proof of work right now, because of high demand or an ongoing attack: "
               f"solve the challenge and send the solution as '{FIELD}'." if why == "missing" else
               f"The proof of work was not accepted ({why.replace('-', ' ')}): solve the new challenge.")
    return ApiError(403, message, "challenge_required", param=FIELD, reason=f"registration/challenge-{why}",
                    extra={"challenge": config.challenges.issue(client, max(1, config.challenge_difficulty()))})


async def challenge(request: Request) -> Response:
    """A new proof-of-work challenge at the level's difficulty (the widget fetches it as the form loads)."""
    config = services(request)
    response = JSONResponse(config.challenges.issue(config.client(request), max(1, config.challenge_difficulty())))
    response.headers["cache-control"] = "no-store"
    return response


@form_page("register.html")
async def _register(request: Request) -> Response:
    fields = await read_fields(request)
    email, password = await credentials(request, fields)
    config = services(request)
    client = config.client(request)
    nonce = _challenged(request, fields, client)  # checked first, spent last: it keeps while its owner waits
    place = await _admitted(request, fields, client)
    try:
        if nonce and not await config.challenges.spend(nonce):
            raise _challenge_refusal(request, client, "used")
        user = await config.accounts.register(email, password, client)
    except ApiError as error:
        if error.code == "email_taken" and config.verification.required:
            # answered as a new address is (its place and challenge spent alike); the owner is told by mail
            if await use_once(config.store, "mail/taken", config.signer.mac("taken", email.strip().lower())[:24],
                              60.0):
                config.verification.taken(config.public_url(), email.strip().lower())
            return await _check_your_inbox(request)
        if place is not None:
            await config.waiting_room.give_back(place)
        raise
    config.traffic.event("signup.created")
    if config.verification.required:
        config.verification.send(config.public_url(), user.id, user.email)
        return await _check_your_inbox(request)
    response: Response
    if is_form(request):
        # the web app signs the new user straight in, like most services do
        response = RedirectResponse("/chat", status_code=303)
        set_session_cookie(request, response, await config.accounts.create_session(user, client))
    else:
        response = JSONResponse({"user": user_json(user.id, user.email),
                                 "verification_required": config.verification.required}, 201)
    # the device that made the account is one its owner uses
    guard = config.guard
    set_device_cookie(request, response, guard.remember(guard.device(request.cookies.get(DEVICE_COOKIE)),
                                                        guard.login_ident(user.email), user.password_hash))
    return response


async def _check_your_inbox(request: Request) -> Response:
    """The answer to a sign-up while addresses are confirmed by mail: the same for a new address and a taken
    one (no account id, no session, no device cookie), so it says nothing about who has an account."""
    if is_form(request):
        return await render(request, "check_email.html", {"principal": None}, status=201)
    return JSONResponse({"verification_required": True}, 201)


async def verify(request: Request) -> Response:
    """GET /auth/verify?token=...: the link mailed to a new account's address. Looking changes nothing (mail
    scanners open links): a browser gets the sign-in form carrying the token (the right password and the token
    confirm the address and sign in), JSON says whether the link is good."""
    token = request.query_params.get("token", "")
    user = await services(request).verification.check(token)
    if user is None:
        raise ApiError(400, "This confirmation link is not valid, or it has expired. Sign in to have a new one "
                       "mailed.", "invalid_token", param="token")
    confirmed = user.email_verified_at is not None
    if wants_html(request.scope):
        return await render(request, "login.html", {"email": user.email, "confirmed": confirmed,
                                                    "verify_token": "" if confirmed else token})
    return JSONResponse({"valid": True, "email_verified": confirmed})


async def resend_verification(request: Request) -> Response:
    """POST /auth/verify/resend: mail the signed-in account's confirmation link again (once a minute)."""
    principal = await require_session(request)
    config = services(request)
    sent = False
    if not principal.email_verified:
        if not await use_once(config.store, "mail/verify", principal.user_id, 60.0):
            raise ApiError(429, "A confirmation link was sent less than a minute ago: check your inbox (and spam "
                           "folder) first.", "rate_limit_exceeded", retry_after=60, reason="mail/verify")
        config.verification.send(config.public_url(), principal.user_id, principal.email,
                                 "asked for a new link to confirm this address")
        sent = True
    if is_form(request):
        return RedirectResponse("/chat", status_code=303)
    return JSONResponse({"email_verified": principal.email_verified, "sent": sent})
