"""The OpenAI-compatible /v1 routes: authenticate the key, check the body, hand over to the proxy.

The inference routes are plain ASGI endpoints (no Request object, no response class): they are the hot
path of every admitted call, and the proxy answers on the ASGI send itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from floodwall.bodies import check_json_content_type, parse_json_object, receive_body
from floodwall.defense.screening import Aside
from floodwall.edge.gate import scope_edge_info
from floodwall.errors import ApiError, log_scope_refusal, send_error
from floodwall.inference import validation
from floodwall.inference.proxy import InferenceCall
from floodwall.principal import Principal
from floodwall.web.auth import api_principal, gate_key_principal, key_principal, require_verified
from floodwall.web.services import Services, services


async def models(request: Request) -> Response:
    await api_principal(request)
    listing = await services(request).upstream.json("GET", "/models")
    return JSONResponse(listing)


class InferenceEndpoint:
    """POST /v1/<endpoint>: the caller's key, its body checked by `check`, then one InferenceCall."""

    def __init__(self, endpoint: str, check: Callable[[dict[str, Any]], None], screened: bool = True) -> None:
        self.endpoint = endpoint
        self.check = check
        self.screened = screened  # prompts are screened; embeddings' inputs are not instructions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config: Services = scope["app"].state.services
        try:
            principal = gate_key_principal(scope) or await key_principal(scope, config.accounts)
            require_verified(scope, principal, config)
            # bodies.receive_json_object's steps, without its coroutine around them (a frame on every call)
            check_json_content_type(scope)
            server = config.settings.server
            body = parse_json_object(await receive_body(scope, receive, server.max_body_size, server.body_timeout))
            config.upstream.fields.apply(self.endpoint, body)
            self.check(body)
            aside = await screen(scope, principal, body, config) if self.screened else None
        except ClientDisconnect:
            return
        except ApiError as error:
            log_scope_refusal(scope, error)
            await send_error(scope, send, error)
            return
        finally:
            # the strike the gate held for the prompt, given back now unless its prompt aside took it: not
            # when the call ends (a slow call holding it for nothing would leave the account's next prompts
            # none to hold)
            edge = scope_edge_info(scope)
            if edge is not None and edge.held is not None:
                edge.held.release()
        await call(scope, principal, self.endpoint, body, aside, config)(scope, receive, send)


def call(scope: Scope, principal: Principal, endpoint: str, body: dict[str, Any],
         aside: Aside | None = None, config: Services | None = None) -> ASGIApp:
    """One inference call, with the caller's tier and the level in force as the gate saw them; then the
    prompt's scoring left aside (screen), once the answer is out."""
    config = config or scope["app"].state.services
    tier, level = tier_and_level(scope)
    return InferenceCall(config.upstream, config.usage, config.admission, principal, endpoint, body, tier, level,
                         aside.end if aside is not None else None)


def screen(scope: Scope, principal: Principal, body: dict[str, Any],
           config: Services | None = None) -> Awaitable[Aside | None]:
    """Prompt screening for this call, with the prompt strikes the gate looked at in its round trip and the one
    it held there for this prompt; the scoring left for the call's end, where the level only logs or flags.
    (The check's own coroutine, not one around it.)"""
    config = config or scope["app"].state.services
    edge = scope_edge_info(scope)
    if edge is None or edge.klass != "api-inference":
        return config.prompt_guard.check(principal, body, *tier_and_level(scope))
    return config.prompt_guard.check(principal, body, edge.tier, edge.level, edge.strikes, edge.held)


def tier_and_level(scope: Scope) -> tuple[str, str]:
    """The caller's tier and the level in force, as the gate saw them."""
    edge = scope_edge_info(scope)
    return (edge.tier, edge.level) if edge else ("established", scope["app"].state.services.control.level)


routes = [
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/chat/completions", InferenceEndpoint("chat/completions", validation.chat_completion),
          methods=["POST"]),
    Route("/v1/completions", InferenceEndpoint("completions", validation.completion), methods=["POST"]),
    Route("/v1/embeddings", InferenceEndpoint("embeddings", validation.embedding, screened=False), methods=["POST"]),
]
