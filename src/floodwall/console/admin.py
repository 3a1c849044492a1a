"""The admin API: defense level, registration mode, bans, allow and deny lists.
`Authorization: Bearer $FLOODWALL_ADMIN_TOKEN`."""

from __future__ import annotations

import hmac
import ipaddress
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from floodwall import cookies
from floodwall.bodies import read_json_object
from floodwall.config import ConfigError, parse_duration
from floodwall.edge.explain import explain_request
from floodwall.edge.policy import REGISTRATION_MODES
from floodwall.errors import ApiError
from floodwall.levels import MODES
from floodwall.limits import Bucket
from floodwall.state.store import Ban, once
from floodwall.web.services import services

MAX_BODY = 64 * 1024


CONSOLE_COOKIE = cookies.CONSOLE
CONSOLE_HEADER = "x-floodwall-console"
CONSOLE_LIFETIME = 12 * 3600


async def require_admin(request: Request) -> None:
    """The admin token as a Bearer, or the console's cookie; a change made with the cookie must also carry the
    console's header, which another site's form or script cannot send (no CORS here): no CSRF."""
    token = services(request).settings.admin.token
    if not token:
        raise ApiError(403, "The admin API is disabled: set FLOODWALL_ADMIN_TOKEN to enable it.", "admin_disabled")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return
    if (request.method in ("GET", "HEAD") or CONSOLE_HEADER in request.headers) and await console_session(request):
        return
    raise ApiError(401, "A valid admin token is needed: Authorization: Bearer $FLOODWALL_ADMIN_TOKEN.",
                   "invalid_admin_token")


async def console_session(request: Request) -> bool:
    """The console's cookie is good: signed by us, young enough, made with the admin token in force, and not
    ended by a sign-out (on any replica: the Store keeps the ended ones until they would have expired)."""
    config = services(request)
    found = config.signer.loads("console", request.cookies.get(CONSOLE_COOKIE, ""), max_age=CONSOLE_LIFETIME)
    if not isinstance(found, dict) or not found.get("i") or \
            not hmac.compare_digest(str(found.get("t", "")), token_tag(request)):
        return False  # a cookie without a session id (made before sign-outs ended sessions) cannot be ended
    (ended,) = await config.store.peek([console_ended(str(found.get("i", "")))])
    return ended.allowed


def console_ended(session_id: str) -> Bucket:
    """The mark a console sign-out leaves for its session (spent: the session has ended)."""
    return once("console/ended", session_id, CONSOLE_LIFETIME)


def token_tag(request: Request) -> str:
    """A tag of the admin token: rotating the token ends every console session."""
    return services(request).signer.mac("console-token", services(request).settings.admin.token)[:16]


def who(request: Request) -> str:
    return f"admin@{services(request).client(request).ip}"


async def get_level(request: Request) -> Response:
    await require_admin(request)
    config = services(request)
    control = config.control
    return JSONResponse({**control.record, "level": control.level,
                         "history": await config.store.level_history(20),
                         "limits": config.policy.edge.limits_for(control.level)})


async def put_level(request: Request) -> Response:
    await require_admin(request)
    body = await read_json_object(request, MAX_BODY)
    mode = body.get("level")
    if mode not in MODES:
        raise ApiError(400, f"'level' must be one of {', '.join(MODES)}.", "invalid_level", param="level")
    reason = body.get("reason", "set by an operator")
    if not isinstance(reason, str):
        raise ApiError(400, "'reason' must be a string.", "invalid_parameter", param="reason")
    record = await services(request).control.set_mode(mode, reason[:500], who(request))
    return JSONResponse(record)


def _registration_state(request: Request) -> dict[str, Any]:
    config = services(request)
    control = config.control
    return {"mode": config.registration_mode(), "pinned": control.registration, "level": control.level,
            "by_level": config.policy.edge.registration, "challenge": config.challenge_difficulty(),
            "challenge_by_level": config.policy.edge.challenge,
            "reason": control.record.get("reason"), "by": control.record.get("by")}


async def get_registration(request: Request) -> Response:
    await require_admin(request)
    return JSONResponse({**_registration_state(request), "queue": await services(request).waiting_room.figures()})


async def put_registration(request: Request) -> Response:
    """Pin the sign-up mode, like PyPI's disallow-new-user-registration flag; "auto" follows the level."""
    await require_admin(request)
    body = await read_json_object(request, MAX_BODY)
    mode = body.get("mode")
    choices = (*REGISTRATION_MODES, "auto")
    if mode not in choices:
        raise ApiError(400, f"'mode' must be one of {', '.join(choices)}.", "invalid_mode", param="mode")
    reason = body.get("reason", "set by an operator")
    if not isinstance(reason, str):
        raise ApiError(400, "'reason' must be a string.", "invalid_parameter", param="reason")
    await services(request).control.set_registration(mode, reason[:500], who(request))
    return JSONResponse(_registration_state(request))


def _ban_json(ban: Ban) -> dict[str, Any]:
    return {"target": ban.target, "reason": ban.reason, "until": ban.until,
            "expires_in": max(0, round(ban.until - time.time())), "strikes": ban.strikes}


def _cidr(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            pass
    raise ApiError(400, f"'{field}' must be an address or a CIDR like 203.0.113.0/24.", "invalid_cidr", param=field)


async def list_bans(request: Request) -> Response:
    await require_admin(request)
    return JSONResponse({"bans": [_ban_json(b) for b in await services(request).store.bans()]})


async def add_ban(request: Request) -> Response:
    await require_admin(request)
    body = await read_json_object(request, MAX_BODY)
    target = _cidr(body, "target")
    try:
        duration = float(parse_duration(body.get("duration", "1h")))
    except ConfigError as exc:
        raise ApiError(400, str(exc), "invalid_duration", param="duration") from None
    reason = str(body.get("reason", "operator"))[:100]
    config = services(request)
    ban = await config.store.ban(target, reason, duration, escalate=bool(body.get("escalate", False)))
    config.control.audit.record(who(request), "ban.add", ban.target, reason=reason, until=ban.until,
                                strikes=ban.strikes)
    await config.control.refresh()
    return JSONResponse(_ban_json(ban), 201)


async def remove_ban(request: Request) -> Response:
    await require_admin(request)
    target = _cidr({"target": request.path_params["target"].replace("_", "/")}, "target")
    config = services(request)
    if not await config.store.unban(target):
        raise ApiError(404, f"No ban on {target}.", "ban_not_found")
    config.control.audit.record(who(request), "ban.remove", target)
    await config.control.refresh()
    return JSONResponse({"target": target, "removed": True})


async def get_lists(request: Request) -> Response:
    await require_admin(request)
    return JSONResponse({"entries": await services(request).store.list_entries()})


async def add_list_entry(request: Request) -> Response:
    await require_admin(request)
    body = await read_json_object(request, MAX_BODY)
    name = request.path_params["name"]
    if name not in ("allow", "deny"):
        raise ApiError(404, "The lists are 'allow' and 'deny'.", "list_not_found")
    entry = {"list": name, "cidr": _cidr(body, "cidr"), "reason": str(body.get("reason", ""))[:200],
             "by": who(request), "at": str(round(time.time()))}
    config = services(request)
    await config.store.set_list_entry(entry)
    config.control.audit.record(who(request), "list.add", entry["cidr"], list=entry["list"],
                                reason=entry.get("reason"))
    await config.control.refresh()
    return JSONResponse(entry, 201)


async def remove_list_entry(request: Request) -> Response:
    await require_admin(request)
    cidr = _cidr({"cidr": request.path_params["cidr"].replace("_", "/")}, "cidr")
    config = services(request)
    if not await config.store.remove_list_entry(request.path_params["name"], cidr):
        raise ApiError(404, f"{cidr} is not on the {request.path_params['name']} list.", "entry_not_found")
    config.control.audit.record(who(request), "list.remove", cidr, list=request.path_params["name"])
    await config.control.refresh()
    return JSONResponse({"cidr": cidr, "removed": True})


async def admission(request: Request) -> Response:
    """The model's admission: the learnt limit, calls in flight and waiting by tier, what was shed."""
    await require_admin(request)
    return JSONResponse(services(request).admission.stats())


async def logins(request: Request) -> Response:
    """Sign-in outcomes over the last minute in this process: succeeded, failed, throttled, the failed ratio."""
    await require_admin(request)
    return JSONResponse(services(request).guard.figures())


async def detector(request: Request) -> Response:
    """The detector: the last second it read (every replica's traffic), its baselines, its rules' state."""
    await require_admin(request)
    config = services(request)
    watch = config.watch
    return JSONResponse({"level": config.control.level, "mode": config.control.record.get("mode", "auto"),
                         "second": watch.second, "leading": watch.leading, "store_healthy": watch.healthy,
                         "figures": {name: round(value, 4) for name, value in watch.figures.items()},
                         **watch.detector.state()})


async def traffic(request: Request) -> Response:
    """This process's traffic over the last minute: requests by class and outcome, events, new addresses and
    networks, and the heaviest talkers."""
    await require_admin(request)
    found = services(request).traffic
    counts = found.recent(60)
    requests: dict[str, dict[str, int]] = {}
    events: dict[str, int] = {}
    for key, count in sorted(counts.items()):
        kind, _, rest = key.partition(":")
        if kind == "req":
            klass, _, outcome = rest.partition(":")
            requests.setdefault(klass, {})[outcome] = count
        elif kind == "event":
            events[rest] = count
    per_second = [{"t": second, "arrivals": c.get("arrivals", 0),
                   "refused": sum(v for k, v in c.items() if k.endswith(":refused")),
                   "errors": sum(v for k, v in c.items() if k.endswith(":5xx"))}
                  for second, c in list(found.history)[-120:]]
    return JSONResponse({"window_seconds": 60, "arrivals": counts["arrivals"], "requests": requests,
                         "per_second": per_second,
                         "events": events, "new_addresses": counts["new_addresses"],
                         "new_networks": counts["new_networks"], "tracked_addresses": found.sources.tracked,
                         "top_talkers": [t._asdict() for t in found.top_talkers(20)]})


async def explain(request: Request) -> Response:
    """What floodwall would decide right now for a request or a prompt, and why, without side effects."""
    await require_admin(request)
    config = services(request)
    body = await read_json_object(request, MAX_BODY)
    if isinstance(body.get("prompt"), str):
        return JSONResponse(config.prompt_guard.explain(body["prompt"], config.control.level))
    described = body.get("request")
    if not isinstance(described, dict):
        raise ApiError(400, "Send {'request': {'method', 'path', 'query', 'headers', 'address'}} or {'prompt': '...'}.",
                       "invalid_request", param="request")
    method, path = described.get("method", "GET"), described.get("path", "/")
    headers, address = described.get("headers", {}), described.get("address", "192.0.2.1")
    path, _, query = path.partition("?") if isinstance(path, str) else (path, "", "")
    query = described.get("query", query)
    if not (isinstance(method, str) and isinstance(path, str) and path.startswith("/")):
        raise ApiError(400, "'request.method' must be a string and 'request.path' start with '/'.",
                       "invalid_request", param="request.path")
    if not isinstance(query, str):
        raise ApiError(400, "'request.query' must be a string (what follows '?').", "invalid_request",
                       param="request.query")
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ApiError(400, "'request.headers' must be an object of strings.", "invalid_request",
                       param="request.headers")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ApiError(400, "'request.address' must be an IP address.", "invalid_request",
                       param="request.address") from None
    if not any(name.lower() == "host" for name in headers):  # every real request names the host: this one
        headers = {"host": request.headers.get("host", "localhost"), **headers}
    try:
        found = await explain_request(request.app.state.gate, method, path, headers, address, query)
    except UnicodeEncodeError:
        raise ApiError(400, "Header names and values must be Latin-1.", "invalid_request",
                       param="request.headers") from None
    return JSONResponse(found)


routes = [
    Route("/admin/api/explain", explain, methods=["POST"]),
    Route("/admin/api/detector", detector, methods=["GET"]),
    Route("/admin/api/traffic", traffic, methods=["GET"]),
    Route("/admin/api/admission", admission, methods=["GET"]),
    Route("/admin/api/logins", logins, methods=["GET"]),
    Route("/admin/api/level", get_level, methods=["GET"]),
    Route("/admin/api/level", put_level, methods=["PUT"]),
    Route("/admin/api/registration", get_registration, methods=["GET"]),
    Route("/admin/api/registration", put_registration, methods=["PUT"]),
    Route("/admin/api/bans", list_bans, methods=["GET"]),
    Route("/admin/api/bans", add_ban, methods=["POST"]),
    Route("/admin/api/bans/{target:path}", remove_ban, methods=["DELETE"]),
    Route("/admin/api/lists", get_lists, methods=["GET"]),
    Route("/admin/api/lists/{name:str}", add_list_entry, methods=["POST"]),
    Route("/admin/api/lists/{name:str}/{cidr:path}", remove_list_entry, methods=["DELETE"]),
]
