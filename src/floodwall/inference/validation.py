"""Strict checks of the /v1 request bodies, answered the way OpenAI answers (400 naming the param).

Which fields go to the model server at all is fields.py's; here, the types of those floodwall relies on
(the cost of a call among them), or that would make the model server fail obscurely.
"""

from __future__ import annotations

from typing import Any

from floodwall.errors import ApiError
from floodwall.inference.fields import CHOICE_FIELDS, LENGTH_FIELDS, MAX_CHOICES

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


def _fail(param: str, message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param=param, reason="invalid_body")


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _require_type(body: dict[str, Any], param: str, kinds: tuple[type, ...], label: str) -> None:
    if param not in body or body[param] is None:
        return
    value = body[param]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise _fail(param, f"Invalid type for '{param}': expected {label}, but got {_type_name(value)}.")


def _positive_int(body: dict[str, Any], param: str) -> None:
    _require_type(body, param, (int,), "an integer")
    if body.get(param) is not None and body[param] < 1:
        raise _fail(param, f"Invalid '{param}': must be at least 1, got {body[param]}.")


def _common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise _fail("model", "Missing required parameter: 'model'.")
    if not isinstance(model, str) or not model.strip():
        raise _fail("model", "Invalid 'model': expected a non-empty string.")
    _require_type(body, "stream", (bool,), "a boolean")
    _require_type(body, "stream_options", (dict,), "an object")
    if isinstance(body.get("stream_options"), dict):
        _require_type(body["stream_options"], "include_usage", (bool,), "a boolean")
        if body.get("stream") is not True:
            raise _fail("stream_options", "'stream_options' is only allowed when 'stream' is true.")
    for param in (*LENGTH_FIELDS, *CHOICE_FIELDS):
        _positive_int(body, param)
    for param in CHOICE_FIELDS:
        if body.get(param) is not None and body[param] > MAX_CHOICES:
            raise _fail(param, f"Invalid '{param}': must be at most {MAX_CHOICES}, got {body[param]}.")
    # model-server extensions that change how much is generated, where the operator forwards them
    _require_type(body, "min_tokens", (int,), "an integer")
    if body.get("min_tokens") is not None and body["min_tokens"] < 0:
        raise _fail("min_tokens", f"Invalid 'min_tokens': must be at least 0, got {body['min_tokens']}.")
    for param in ("ignore_eos", "use_beam_search"):
        _require_type(body, param, (bool,), "a boolean")
    for param in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _require_type(body, param, (int, float), "a number")
    _require_type(body, "stop", (str, list), "a string or an array")
    _require_type(body, "user", (str,), "a string")


def chat_completion(body: dict[str, Any]) -> None:
    _common(body)
    messages = body.get("messages")
    if messages is None:
        raise _fail("messages", "Missing required parameter: 'messages'.")
    if not isinstance(messages, list):
        raise _fail("messages", f"Invalid type for 'messages': expected an array, but got {_type_name(messages)}.")
    if not messages:
        raise _fail("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1.")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _fail(param, f"Invalid type for '{param}': expected an object, but got {_type_name(message)}.")
        role = message.get("role")
        if role not in ROLES:
            raise _fail(f"{param}.role", f"Invalid value for '{param}.role': expected one of "
                        f"{', '.join(sorted(ROLES))}, got {role!r}.")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _fail(f"{param}.content", f"Invalid type for '{param}.content': expected a string or an array "
                        f"of content parts, but got {_type_name(content)}.")
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _fail(f"{param}.content[{part_index}]", f"Invalid '{param}.content[{part_index}]': "
                                "expected an object with a 'type'.")
        if content is None and role != "assistant":
            raise _fail(f"{param}.content", f"Missing required parameter: '{param}.content'.")


def _prompt_like(body: dict[str, Any], param: str) -> None:
    value = body.get(param)
    if value is None:
        raise _fail(param, f"Missing required parameter: '{param}'.")
    ok = isinstance(value, str) or (
        isinstance(value, list) and bool(value) and (
            all(isinstance(v, str) for v in value)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or all(isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
                   for v in value)
        )
    )
    if not ok:
        raise _fail(param, f"Invalid '{param}': expected a string, an array of strings, or an array of "
                    "token arrays.")


def completion(body: dict[str, Any]) -> None:
    _common(body)
    _prompt_like(body, "prompt")


def embedding(body: dict[str, Any]) -> None:
    _common(body)
    _prompt_like(body, "input")
    _require_type(body, "encoding_format", (str,), "a string")
    if body.get("stream") is True:
        raise _fail("stream", "Embeddings cannot be streamed.")
