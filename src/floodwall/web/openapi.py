"""The OpenAPI 3.1 description of floodwall's JSON routes (auth, account, admin, status JSON, /v1), served
at /openapi.json: for API clients, and for the schemathesis runs that fuzz a live server (tests/fuzz)."""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from floodwall import __version__, cookies
from floodwall.accounts.challenges import FIELD
from floodwall.edge.policy import REGISTRATION_MODES
from floodwall.levels import MODES

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
ANY_OBJECT: Schema = {"type": "object"}
SHORT = {"type": "string", "maxLength": 200}
EMAIL: Schema = {"type": "string", "format": "email", "maxLength": 320}
PASSWORD: Schema = {"type": "string", "minLength": 1, "maxLength": 1024}
DURATION: Schema = {"type": "string", "description": "seconds, or 30s, 5m, 24h", "examples": ["1h"]}
CIDR: Schema = {"type": "string", "description": "an address or a network", "examples": ["203.0.113.0/24"]}
INCIDENT_STATUS: Schema = {"enum": ["investigating", "identified", "monitoring", "resolved"]}
IMPACT: Schema = {"enum": ["none", "minor", "major", "critical"]}
COMPONENTS: Schema = {"type": "object", "additionalProperties": {
    "enum": ["operational", "degraded_performance", "partial_outage", "major_outage", "under_maintenance"]}}

Security = list[dict[str, list[str]]]
USER: Security = [{"session": []}]
KEY: Security = [{"api_key": []}]
ADMIN: Security = [{"admin_token": []}]
PUBLIC: Security = []

ERROR: Schema = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"],
    "properties": {"message": STRING, "type": STRING, "code": {"type": ["string", "null"]},
                   "param": {"type": ["string", "null"]}}}}}


def obj(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """A JSON object with these properties. The account routes ignore others; /v1 takes the rest of OpenAI's
    fields and the enabled extensions, and refuses any other (docs/configuration.md#the-fields-forwarded)."""
    found: Schema = {"type": "object", "properties": properties}
    if required:
        found["required"] = list(required)
    return found


def operation(summary: str, tag: str, security: Security, body: Schema | None = None,
              query: tuple[tuple[str, Schema], ...] = (), path: tuple[str, ...] = (), ok: int = 200,
              stream: bool = False, links: dict[str, tuple[str, str, str]] | None = None) -> Schema:
    """One operation: what it takes, what it answers, and the OpenAI-shaped error it refuses with. `links`:
    name -> (operation id, parameter, where in this answer its value is), for clients that follow them."""
    answer: Schema = {"description": "done", "content": {
        "application/json": {"schema": ANY_OBJECT}, **({"text/event-stream": {"schema": STRING}} if stream else {})}}
    if links:
        answer["links"] = {name: {"operationId": target, "parameters": {parameter: value}}
                           for name, (target, parameter, value) in links.items()}
    found: Schema = {"summary": summary, "tags": [tag], "security": security,
                     "responses": {str(ok): answer,
                         "4XX": {"description": "refused: the reason is in the body and X-Floodwall-Reason",
                                 "content": {"application/json": {"schema": ERROR}}}}}
    parameters = [{"name": name, "in": "path", "required": True, "schema": STRING} for name in path]
    parameters += [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in query]
    if parameters:
        found["parameters"] = parameters
    if body is not None:
        found["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return found


MESSAGE = obj(("role",), role={"enum": ["system", "developer", "user", "assistant", "tool"]},
              content={"oneOf": [STRING, {"type": "array", "items": obj(("type",), type=STRING, text=STRING)},
                                 {"type": "null"}]},
              name=STRING)
SAMPLING = {"max_tokens": {"type": "integer", "minimum": 1}, "temperature": NUMBER, "top_p": NUMBER,
            "n": {"type": "integer", "minimum": 1, "maximum": 128}, "stream": BOOLEAN,
            "stop": {"oneOf": [STRING, {"type": "array"}]}, "user": STRING}
PROMPT_LIKE: Schema = {"oneOf": [STRING, {"type": "array", "items": STRING}, {"type": "array", "items": INTEGER}]}
EXPLAINED_REQUEST = obj(method=STRING, path={"type": "string", "pattern": "^/"}, query=STRING,
                        headers={"type": "object", "additionalProperties": STRING}, address=STRING)


def _paths() -> dict[str, dict[str, Schema]]:
    auth, account, admin, status, v1 = "auth", "account", "admin", "status", "v1"
    return {
        # the public API of a model service, as the openai SDK calls it
        "/v1/models": {"get": operation("The models the service offers", v1, KEY)},
        "/v1/chat/completions": {"post": operation("A chat completion (streamed with stream: true)", v1, KEY,
                                                   obj(("model", "messages"), model=STRING,
                                                       messages={"type": "array", "minItems": 1, "items": MESSAGE},
                                                       max_completion_tokens={"type": "integer", "minimum": 1},
                                                       **SAMPLING), stream=True)},
        "/v1/completions": {"post": operation("A text completion", v1, KEY,
                                              obj(("model", "prompt"), model=STRING, prompt=PROMPT_LIKE, **SAMPLING),
                                              stream=True)},
        "/v1/embeddings": {"post": operation("Embeddings", v1, KEY, obj(("model", "input"), model=STRING,
                                                                        input=PROMPT_LIKE, encoding_format=STRING))},
        # accounts
        "/auth/register": {"post": operation("Sign up (a proof of work and a queue ticket when the mode asks)",
                                             auth, PUBLIC, obj(("email", "password"), email=EMAIL, password=PASSWORD,
                                                               ticket=STRING, **{FIELD: STRING}), ok=201)},
        "/auth/login": {"post": operation("Sign in; the session cookie is set", auth, PUBLIC,
                                          obj(("email", "password"), email=EMAIL, password=PASSWORD, totp=SHORT,
                                              email_code=SHORT, verify_token=STRING))},
        "/auth/logout": {"post": operation("Sign out of this session", auth, USER)},
        "/auth/queue": {"get": operation("The sign-up waiting room: a ticket's place", auth, PUBLIC,
                                         query=(("ticket", STRING),)),
                        "post": operation("Join the waiting room, or ask about a ticket", auth, PUBLIC,
                                          obj(ticket=STRING))},
        "/auth/challenge": {"get": operation("A proof-of-work challenge (ALTCHA)", auth, PUBLIC)},
        "/auth/verify": {"get": operation("Whether a mailed confirmation link is good (changes nothing; sign in "
                                          "with its token as verify_token to confirm)", auth, PUBLIC,
                                          query=(("token", STRING),))},
        "/auth/verify/resend": {"post": operation("Mail the confirmation link again", auth, USER)},
        "/auth/password-reset": {"post": operation("Mail a password reset link", auth, PUBLIC,
                                                   obj(("email",), email=EMAIL))},
        "/auth/reset": {"post": operation("Choose a new password with a mailed token", auth, PUBLIC,
                                          obj(("token", "password"), token=STRING, password=PASSWORD))},
        "/account/keys": {"get": operation("This account's API keys", account, USER),
                          "post": operation("Create an API key (shown once)", account, USER, obj(name=SHORT),
                                            ok=201, links={
                                                "revoke": (op_id("delete", "/account/keys/{key_id}"), "key_id",
                                                           "$response.body#/id")})},
        "/account/keys/{key_id}": {"delete": operation("Revoke an API key", account, USER, path=("key_id",))},
        "/account/keys/{key_id}/revoke": {"post": operation("Revoke an API key", account, USER, path=("key_id",))},
        "/account/activity": {"get": operation("Sign-ins, keys, alerts: the account's activity", account, USER)},
        "/account/sessions": {"get": operation("Where this account is signed in", account, USER, links={
            "sign-out": (op_id("post", "/account/sessions/{session_id}/revoke"), "session_id",
                         "$response.body#/data/0/id")})},
        "/account/sessions/revoke-others": {"post": operation("Sign out everywhere else", account, USER)},
        "/account/sessions/{session_id}": {"delete": operation("Sign one session out", account, USER,
                                                               path=("session_id",))},
        "/account/sessions/{session_id}/revoke": {"post": operation("Sign one session out", account, USER,
                                                                    path=("session_id",))},
        "/account/usage": {"get": operation("Tokens used, by day and key", account, USER)},
        "/account/password": {"post": operation("Change the password", account, USER,
                                                obj(("current_password", "new_password"), current_password=PASSWORD,
                                                    new_password=PASSWORD))},
        "/account/totp": {"get": operation("Whether two-factor sign-in is on", account, USER)},
        "/account/totp/setup": {"post": operation("Start two-factor setup: a secret and a setup token", account,
                                                  USER, obj(password=PASSWORD))},
        "/account/totp/enable": {"post": operation("Turn two-factor on with a first code", account, USER,
                                                   obj(("setup_token", "code"), setup_token=STRING, code=SHORT))},
        "/account/totp/disable": {"post": operation("Turn two-factor off", account, USER,
                                                    obj(("password",), password=PASSWORD, code=SHORT))},
        # the status page's JSON, as Statuspage serves it
        **{f"/api/v2/{name}.json": {"get": operation(f"Status: {name.replace('/', ' ')}", status, PUBLIC)}
           for name in ("summary", "status", "components", "incidents", "incidents/unresolved")},
        # operators
        "/admin/api/level": {"get": operation("The defense level, its mode and history", admin, ADMIN),
                             "put": operation("Pin the level, or give it back to the detector", admin, ADMIN,
                                              obj(("level",), level={"enum": list(MODES)}, reason=SHORT))},
        "/admin/api/registration": {"get": operation("The sign-up mode and the waiting room", admin, ADMIN),
                                    "put": operation("Pin the sign-up mode", admin, ADMIN,
                                                     obj(("mode",), mode={"enum": ["auto", *REGISTRATION_MODES]},
                                                         reason=SHORT))},
        "/admin/api/bans": {"get": operation("Bans in force", admin, ADMIN),
                            "post": operation("Ban an address or a network", admin, ADMIN,
                                              obj(("target",), target=CIDR, duration=DURATION, reason=SHORT,
                                                  escalate=BOOLEAN), ok=201, links={
                                                  "lift": (op_id("delete", "/admin/api/bans/{target}"), "target",
                                                           "$response.body#/target")})},
        "/admin/api/bans/{target}": {"delete": operation("Lift a ban", admin, ADMIN, path=("target",))},
        "/admin/api/lists": {"get": operation("The allow and deny lists", admin, ADMIN)},
        "/admin/api/lists/{name}": {"post": operation("Add to the allow or deny list", admin, ADMIN,
                                                      obj(("cidr",), cidr=CIDR, reason=SHORT), path=("name",),
                                                      ok=201)},
        "/admin/api/lists/{name}/{cidr}": {"delete": operation("Remove from a list", admin, ADMIN,
                                                               path=("name", "cidr"))},
        "/admin/api/incidents": {"get": operation("Recent incidents", admin, ADMIN),
                                 "post": operation("Open an incident on the status page", admin, ADMIN,
                                                   obj(("name", "body"), name=SHORT, body=STRING,
                                                       status=INCIDENT_STATUS, impact=IMPACT, components=COMPONENTS),
                                                   ok=201, links={"update": (
                                                       op_id("post", "/admin/api/incidents/{incident}/updates"),
                                                       "incident", "$response.body#/id")})},
        "/admin/api/incidents/{incident}/updates": {"post": operation(
            "Post an incident update (resolved closes it)", admin, ADMIN,
            obj(("status", "body"), status=INCIDENT_STATUS, body=STRING, impact=IMPACT, components=COMPONENTS),
            path=("incident",))},
        "/admin/api/users": {"get": operation("Find accounts", admin, ADMIN,
                                              query=(("q", STRING), ("limit", STRING)), links={
                                                  action: (op_id("post", f"/admin/api/users/{{user}}/{action}"),
                                                           "user", "$response.body#/users/0/id")
                                                  for action in ("disable", "enable", "sign-out")})},
        **{f"/admin/api/users/{{user}}/{action}": {"post": operation(f"{action.replace('-', ' ').capitalize()} "
                                                                       "an account", admin, ADMIN, path=("user",))}
           for action in ("disable", "enable", "sign-out")},
        "/admin/api/audit": {"get": operation("The audit log", admin, ADMIN,
                                              query=(("limit", STRING), ("action", STRING)))},
        "/admin/api/explain": {"post": operation("What floodwall would decide for a request or a prompt, and why",
                                                 admin, ADMIN, {"oneOf": [obj(("request",), request=EXPLAINED_REQUEST),
                                                                          obj(("prompt",), prompt=STRING)]})},
        **{f"/admin/api/{name}": {"get": operation(summary, admin, ADMIN)} for name, summary in (
            ("detector", "The detector's baselines and why the level moved"),
            ("traffic", "The last minute of traffic: classes, outcomes, top talkers"),
            ("admission", "The model's admission: learnt limit, queues, in flight"),
            ("logins", "Sign-in figures: failures, guarded accounts"))},
    }


def op_id(method: str, path: str) -> str:
    """An operation's id, from its method and path: post_account_keys, delete_account_keys_key_id."""
    return method + "".join(f"_{part}" for part in re.split(r"[^a-z0-9]+", path.lower()) if part)


def document() -> Schema:
    paths = _paths()
    for path, operations in paths.items():
        for method, found in operations.items():
            found["operationId"] = op_id(method, path)
    return {
        "openapi": "3.1.0",
        "info": {"title": "floodwall", "version": __version__,
                 "description": "The front door of an AI model service. Every refusal is OpenAI-shaped JSON "
                                "with its reason in X-Floodwall-Reason."},
        "components": {"securitySchemes": {
            "api_key": {"type": "http", "scheme": "bearer", "description": "an API key from /account/keys"},
            "session": {"type": "apiKey", "in": "cookie", "name": cookies.SESSION,
                        "description": "the session cookie /auth/login sets (__Host-fw_session when "
                                       "server.public_url is https)"},
            "admin_token": {"type": "http", "scheme": "bearer", "description": "FLOODWALL_ADMIN_TOKEN"}}},
        "paths": paths,
    }


@functools.cache
def rendered() -> bytes:
    return orjson.dumps(document())


async def openapi(request: Request) -> Response:
    return Response(rendered(), media_type="application/json", headers={"Cache-Control": "public, max-age=300"})
