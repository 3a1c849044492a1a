"""The public status routes: the page, its Atom feed and the Statuspage-compatible JSON, each served from
the board's rendered bytes (no database, no rendering per view) and cacheable for a few seconds."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from floodwall.web.services import services

# a CDN or browser may keep a view this long: during a flood most views never reach us
CACHE = {"cache-control": "public, max-age=5", "vary": "accept-encoding"}
GZIPPED = {**CACHE, "content-encoding": "gzip"}
_MEDIA = {"page": "text/html; charset=utf-8", "atom": "application/atom+xml; charset=utf-8"}


def _route(path: str, part: str) -> Route:
    media = _MEDIA.get(part, "application/json")

    async def view(request: Request) -> Response:
        rendered = services(request).status.rendered
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(rendered[f"{part}.gz"], media_type=media, headers=GZIPPED)
        return Response(rendered[part], media_type=media, headers=CACHE)

    return Route(path, view, methods=["GET", "HEAD"])


routes = [
    _route("/status", "page"),
    _route("/status/history.atom", "atom"),
    _route("/api/v2/summary.json", "summary"),
    _route("/api/v2/status.json", "status"),
    _route("/api/v2/components.json", "components"),
    _route("/api/v2/incidents.json", "incidents"),
    _route("/api/v2/incidents/unresolved.json", "unresolved"),
]
