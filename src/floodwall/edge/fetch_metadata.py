"""Fetch Metadata: what a browser says about where a request comes from (Sec-Fetch-Site, -Mode, -Dest).
The resource-isolation policy (after web.dev's): another site may link to a page here, not load one of
ours as its sub-resource, post a form to us, or script a call with the visitor's cookies."""

from __future__ import annotations

from starlette.types import Scope

from floodwall.errors import ApiError

CROSS_SITE = ApiError(403, "Cross-site request refused: this service's pages and calls are not another site's "
                      "to load or send.", "cross_site_request", reason="fetch-metadata/cross-site")
# the Statuspage-style JSON and the status page are made to be read from other sites' widgets
OPEN_CLASSES = frozenset({"status"})


def cross_site(scope: Scope, klass: str) -> bool:
    """A browser's cross-site request that is not a plain navigation to a page (a link followed): an image,
    a script, a frame's object, a form post, a fetch. Clients that send no Fetch Metadata (API clients,
    curl, old browsers) and calls carrying their own Bearer key (not the visitor's cookies) are not refused."""
    if klass in OPEN_CLASSES:
        return False
    site = mode = dest = None
    for name, value in scope["headers"]:
        if name == b"sec-fetch-site":
            site = value
        elif name == b"sec-fetch-mode":
            mode = value
        elif name == b"sec-fetch-dest":
            dest = value
        elif name == b"authorization" and value[:7].lower() == b"bearer ":
            return False  # a key of its own (Basic credentials a browser caches would be the visitor's)
    if site != b"cross-site":
        return False
    return not (mode == b"navigate" and scope["method"] in ("GET", "HEAD") and dest not in (b"object", b"embed"))
