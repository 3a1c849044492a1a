"""The floor for bench/edge.py: a bare ASGI app answering every request with floodwall's 429, byte for byte
the same shape and headers, and nothing else."""

from __future__ import annotations

import json
from typing import Any

BODY = json.dumps({"error": {"message": "Rate limit reached (flood/ip). Please try again in 3600s.",
                             "type": "requests", "param": None, "code": "rate_limit_exceeded",
                             "retry_after": 3600}}).encode()
HEADERS = [(b"x-floodwall-reason", b"flood/ip"), (b"cache-control", b"no-store"), (b"retry-after", b"3600"),
           (b"content-length", str(len(BODY)).encode()), (b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 429, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
