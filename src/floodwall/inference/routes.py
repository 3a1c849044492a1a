"""The OpenAI-compatible /v1 routes: authenticate the key, check the body, hand over to the proxy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from floodwall.accounts.auth import api_principal
from floodwall.accounts.service import Principal
from floodwall.bodies import read_json_object
from floodwall.edge.gate import edge_info
from floodwall.inference import validation
from floodwall.inference.proxy import InferenceCall
from floodwall.services import services


async def models(request: Request) -> Response:
    await api_principal(request)
    listing = await services(request).upstream.json("GET", "/models")
    return JSONResponse(listing)


def call(request: Request, principal: Principal, endpoint: str, body: dict[str, Any]) -> InferenceCall:
    """One inference call, with the caller's tier and the level in force as the gate saw them."""
    config = services(request)
    edge = edge_info(request)
    tier, level = (edge.tier, edge.level) if edge else ("established", config.control.level)
    return InferenceCall(config.upstream, config.usage, config.admission, principal, endpoint, body, tier, level)


def _inference(endpoint: str, check: Callable[[dict[str, Any]], None]) -> Callable[[Request], Any]:
    async def handler(request: Request) -> InferenceCall:
        principal = await api_principal(request)
        config = services(request)
        body = await read_json_object(request, config.settings.server.max_body_size)
        check(body)
        return call(request, principal, endpoint, body)

    return handler


routes = [
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/chat/completions", _inference("chat/completions", validation.chat_completion), methods=["POST"]),
    Route("/v1/completions", _inference("completions", validation.completion), methods=["POST"]),
    Route("/v1/embeddings", _inference("embeddings", validation.embedding), methods=["POST"]),
]
