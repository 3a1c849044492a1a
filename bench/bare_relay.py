"""The floor for the latency part of bench/edge.py: a bare ASGI relay on the same server, with floodwall's
own model server client (inference/http1.py) and nothing else: no gate, no routing, no checks, no admission.
What floodwall adds above this relay is the cost of its own logic; what the relay adds is the hop's."""

from __future__ import annotations

import os
from typing import Any

from floodwall.inference.http1 import Pool

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8000/v1")
HEADERS = b"content-type: application/json\r\naccept-encoding: identity\r\n"
_pool: Pool | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _pool = Pool(UPSTREAM, connect_timeout=5, read_timeout=60, max_connections=1024)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _pool is not None:
                    await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert _pool is not None
    body = []
    while True:
        message = await receive()
        body.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    response = await _pool.request("POST", scope["path"].removeprefix("/v1"), b"".join(body), HEADERS)
    raw = await response.read()
    response.release()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})
