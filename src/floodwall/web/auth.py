"""Who is calling: an API key (Authorization: Bearer) for /v1, a session cookie for the web app."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from floodwall import bodies
from floodwall.accounts.guard import DEVICE_COOKIE, DEVICE_LIFETIME
from floodwall.accounts.service import AccountService
from floodwall.edge.gate import edge_info, scope_edge_info
from floodwall.errors import ApiError
from floodwall.principal import Principal
from floodwall.web.services import Services, services


async def api_principal(request: Request) -> Principal:
    return await key_principal(request.scope, services(request).accounts)


async def key_principal(scope: Scope, accounts: AccountService) -> Principal:
    """The account behind the request's API key, or the 401 that says what is wrong with the header."""
    found = gate_key_principal(scope)
    if found is not None:
        return found
    principal = await accounts.key_principal(_bearer(scope))
    if principal is None:
        raise _incorrect_key()
    return principal


def gate_key_principal(scope: Scope) -> Principal | None:
    """key_principal's answer where the gate resolved the key (or declined to look it up: no second lookup),
    without a coroutine; None where no gate ran."""
    _bearer(scope)
    edge = scope_edge_info(scope)
    if edge is None:
        return None
    if edge.principal is None or edge.principal.key_id is None:
        raise _incorrect_key()
    return edge.principal


def _bearer(scope: Scope) -> str:
    """The key in the Authorization header, or the 401 that says what is wrong with the header."""
    header = bodies.header(scope, b"authorization") or ""
    scheme, _, secret = header.partition(" ")
    if not header:
        raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'; "
                       "create keys on the API keys page.", "missing_api_key")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "The Authorization header must be 'Bearer YOUR_KEY'.", "invalid_api_key")
    return secret.strip()


def _incorrect_key() -> ApiError:
    return ApiError(401, "Incorrect API key provided. Keys are shown once at creation; create a new one if it is "
                    "lost.", "invalid_api_key")


async def session_principal(request: Request) -> Principal | None:
    """The signed-in account. Behind the gate, the one the gate found and limited by, and no other: a cookie
    the gate did not read as a session (`fw_session ="..."`, a second Cookie header) signs nobody in."""
    edge = edge_info(request)
    if edge is not None:
        return edge.principal if edge.principal is not None and edge.principal.session_id is not None else None
    secret = request.cookies.get(services(request).session_cookie)
    if not secret:
        return None
    return await services(request).accounts.session_principal(secret)


async def require_session(request: Request) -> Principal:
    """The signed-in account, for routes that change it: also refuses cross-site requests."""
    check_same_origin(request)
    principal = await session_principal(request)
    if principal is None:
        raise ApiError(401, "You are not signed in.", "not_signed_in")
    return principal


def require_verified(request: Request | Scope, principal: Principal, config: Services | None = None) -> None:
    """Where confirming the e-mail address is required, an account not confirmed (one made before it was, and
    still signed in) may look around, but not chat, call the model with a key it made then, or make keys."""
    if config is None:
        config = services(request) if isinstance(request, Request) else request["app"].state.services
    if config.verification.required and not principal.email_verified:
        raise ApiError(403, f"Confirm your e-mail address first: open the link sent to {principal.email} "
                       "(or ask for a new one from the chat page).", "email_not_verified")


CROSS_SITE_FORM = ApiError(403, "Cross-site request refused.", "cross_site_request")


def check_same_origin(request: Request) -> None:
    """A state-changing browser request must come from our own pages. A browser says so with Fetch Metadata
    (same-origin, or none: typed or bookmarked) and with Origin; `Origin: null` (a sandboxed frame, a
    cross-origin redirect, a no-referrer page) is another site's. API clients send neither and pass (a key,
    not a cookie, speaks for them). SameSite=Lax is the first guard; this is the second, for old browsers
    and same-site subdomains."""
    if request.method in {"GET", "HEAD", "OPTIONS"}:
        return
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if (site is not None and site not in ("same-origin", "none")) or origin == "null":
        raise CROSS_SITE_FORM
    origin = origin or request.headers.get("referer")
    if not origin:
        return
    # our own pages are on the Host the request names, or on server.public_url's host (a proxy in front may
    # rewrite Host)
    ours = {request.headers.get("host", "").lower()}
    public = services(request).settings.server.public_url
    if public:
        ours.add(urlsplit(public).netloc.lower())
    try:
        elsewhere = urlsplit(origin).netloc.lower() not in ours
    except ValueError:  # an Origin or Referer urllib cannot split ("http://[") is no page of ours
        elsewhere = True
    if elsewhere:
        raise CROSS_SITE_FORM


def set_session_cookie(request: Request, response: Response, secret: str) -> None:
    config = services(request)
    response.set_cookie(
        config.session_cookie, secret, max_age=int(config.settings.accounts.session_lifetime), httponly=True,
        samesite="lax", secure=config.is_https(request), path="/",
    )


def set_device_cookie(request: Request, response: Response, value: str) -> None:
    # only sign-in and sign-up read it
    response.set_cookie(DEVICE_COOKIE, value, max_age=int(DEVICE_LIFETIME.total_seconds()), httponly=True,
                        samesite="lax", secure=services(request).is_https(request), path="/auth")


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(services(request).session_cookie, path="/", httponly=True, samesite="lax",
                           secure=services(request).is_https(request))
