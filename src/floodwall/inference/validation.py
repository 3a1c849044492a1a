"""Strict checks of the /v1 request bodies, answered the way OpenAI answers (400 naming the param).

Which fields go to the model server at all is fields.py's; here, the types of those floodwall relies on
(the cost of a call among them), or that would make the model server fail obscurely.
"""

from __future__ import annotations

from typing import Any

from floodwall.errors import ApiError
from floodwall.inference.fields import CHOICE_FIELDS, LENGTH_FIELDS, MAX_CHOICES, MIN_LENGTH_FIELD

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


# the fields floodwall relies on, checked in this order (the first failing one is the one named) when present
# and not null: (field, types or None for a bound alone, their name in the error, least, most). A table read
# in one loop, not a function called for each of two dozen fields. Model-server extensions that change how much
# is generated count too, where the operator forwards them.
_Check = tuple[str, tuple[type, ...] | None, str, int | None, int | None]
_CHECKS: tuple[_Check, ...] = (
    ("stream", (bool,), "a boolean", None, None),
    ("stream_options", (dict,), "an object", None, None),  # then its own fields, in _common's loop
    *((param, (int,), "an integer", 1, None) for param in (*LENGTH_FIELDS, *CHOICE_FIELDS)),
    *((param, None, "", None, MAX_CHOICES) for param in CHOICE_FIELDS),
    (MIN_LENGTH_FIELD, (int,), "an integer", 0, None),
    *((param, (bool,), "a boolean", None, None) for param in ("ignore_eos", "use_beam_search")),
    *((param, (int, float), "a number", None, None)
      for param in ("temperature", "top_p", "presence_penalty", "frequency_penalty")),
    ("stop", (str, list), "a string or an array", None, None),
    ("user", (str,), "a string", None, None),
)


def _common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise _fail("model", "Missing required parameter: 'model'.")
    if not isinstance(model, str) or not model.strip():
        raise _fail("model", "Invalid 'model': expected a non-empty string.")
    for param, kinds, label, least, most in _CHECKS:
        value = body.get(param)
        if value is None:
            continue
        if kinds is not None and ((isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds)):
            raise _fail(param, f"Invalid type for '{param}': expected {label}, but got {_type_name(value)}.")
        if least is not None and isinstance(value, int) and value < least:
            raise _fail(param, f"Invalid '{param}': must be at least {least}, got {value}.")
        if most is not None and isinstance(value, int) and value > most:
            raise _fail(param, f"Invalid '{param}': must be at most {most}, got {value}.")
        if param == "stream_options":
            _require_type(value, "include_usage", (bool,), "a boolean")
            if body.get("stream") is not True:
                raise _fail("stream_options", "'stream_options' is only allowed when 'stream' is true.")


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
