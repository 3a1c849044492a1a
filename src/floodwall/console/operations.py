"""The admin API for incidents, accounts and the audit log (`Authorization: Bearer $FLOODWALL_ADMIN_TOKEN`,
or the console's session). Every change is recorded in the audit log."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from floodwall.bodies import read_json_object, whole_number
from floodwall.console.admin import MAX_BODY, require_admin, who
from floodwall.errors import ApiError
from floodwall.status.incidents import Record, checked
from floodwall.web.services import services


def _incident(record: Record) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "status": record.status, "impact": record.impact,
            "components": dict(record.components), "automatic": record.automatic,
            "created_at": record.created_at.isoformat(), "updated_at": record.updated_at.isoformat(),
            "resolved_at": record.resolved_at.isoformat() if record.resolved_at else None,
            "updates": [{"id": u.id, "status": u.status, "body": u.body, "at": u.at.isoformat(), "by": u.by}
                        for u in record.updates]}


def _number(request: Request, name: str) -> int:
    text = request.path_params[name]
    number = whole_number(text)
    if number is None:
        raise ApiError(404, f"No such {name}: {text[:40]!r}.", f"{name}_not_found")
    return number


async def list_incidents(request: Request) -> Response:
    await require_admin(request)
    return JSONResponse({"incidents": [_incident(r) for r in await services(request).incidents.recent(limit=100)]})


async def open_incident(request: Request) -> Response:
    await require_admin(request)
    body = await read_json_object(request, MAX_BODY)
    checked(body.get("status"), body.get("impact"), body.get("components"), body.get("body"), body.get("name"))
    if "name" not in body or "body" not in body:
        raise ApiError(400, "An incident needs a 'name' and a first update's 'body'.", "invalid_request",
                       param="name" if "name" not in body else "body")
    config = services(request)
    record = await config.incidents.open(body["name"], body["body"], who(request),
                                         status=body.get("status", "investigating"),
                                         impact=body.get("impact", "minor"), components=body.get("components"))
    config.control.audit.record(who(request), "incident.open", str(record.id), name=record.name,
                                status=record.status, impact=record.impact)
    config.status.changed()
    return JSONResponse(_incident(record), 201)


async def update_incident(request: Request) -> Response:
    await require_admin(request)
    incident_id = _number(request, "incident")
    body = await read_json_object(request, MAX_BODY)
    if "status" not in body or "body" not in body:
        raise ApiError(400, "An update needs a 'status' and a 'body'.", "invalid_request",
                       param="status" if "status" not in body else "body")
    checked(body["status"], body.get("impact"), body.get("components"), body["body"])
    config = services(request)
    record = await config.incidents.update(incident_id, body["status"], body["body"], who(request),
                                           components=body.get("components"), impact=body.get("impact"))
    config.control.audit.record(who(request), "incident.resolve" if record.status == "resolved" else "incident.update",
                                str(record.id), status=record.status)
    config.status.changed()
    return JSONResponse(_incident(record))


async def list_users(request: Request) -> Response:
    await require_admin(request)
    query = request.query_params.get("q", "")[:320]
    limit = request.query_params.get("limit", "50")
    count = whole_number(limit)
    if count is None:
        raise ApiError(400, "'limit' must be a whole number.", "invalid_request", param="limit")
    return JSONResponse({"users": await services(request).directory.find(query, count)})


async def disable_user(request: Request) -> Response:
    return await _set_disabled(request, True)


async def enable_user(request: Request) -> Response:
    return await _set_disabled(request, False)


async def _set_disabled(request: Request, disabled: bool) -> Response:
    await require_admin(request)
    user_id = _number(request, "user")
    config = services(request)
    found = await config.directory.set_disabled(user_id, disabled, who(request))
    config.control.audit.record(who(request), "user.disable" if disabled else "user.enable", str(user_id),
                                email=found["email"])
    return JSONResponse(found)


async def sign_out_user(request: Request) -> Response:
    await require_admin(request)
    user_id = _number(request, "user")
    config = services(request)
    count = await config.directory.sign_out_everywhere(user_id, who(request))
    config.control.audit.record(who(request), "user.sign_out", str(user_id), sessions=count)
    return JSONResponse({"id": user_id, "sessions_ended": count})


async def audit_log(request: Request) -> Response:
    await require_admin(request)
    limit = request.query_params.get("limit", "100")
    count = whole_number(limit)
    if count is None:
        raise ApiError(400, "'limit' must be a whole number.", "invalid_request", param="limit")
    found = await services(request).control.audit.recent(max(1, min(count, 1000)),
                                                          request.query_params.get("action", "")[:60])
    return JSONResponse({"events": found})


routes = [
    Route("/admin/api/incidents", list_incidents, methods=["GET"]),
    Route("/admin/api/incidents", open_incident, methods=["POST"]),
    Route("/admin/api/incidents/{incident}/updates", update_incident, methods=["POST"]),
    Route("/admin/api/users", list_users, methods=["GET"]),
    Route("/admin/api/users/{user}/disable", disable_user, methods=["POST"]),
    Route("/admin/api/users/{user}/enable", enable_user, methods=["POST"]),
    Route("/admin/api/users/{user}/sign-out", sign_out_user, methods=["POST"]),
    Route("/admin/api/audit", audit_log, methods=["GET"]),
]
