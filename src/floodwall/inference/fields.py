"""What a /v1 body may carry to the model server, and what it may make the model generate.

The model server gets the fields each OpenAI endpoint defines and the extensions an operator enables
(`upstream.extra_fields`); any other field is refused with a 400 naming it, or dropped
(`upstream.unknown_fields`). Of what goes, the fields that lengthen or multiply generation are read here,
every one of them, for the cost estimate and the caps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from floodwall.config import ConfigError, UnknownFields
from floodwall.errors import ApiError
from floodwall.text import shown

_SAMPLING = ("frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n", "presence_penalty", "seed", "stop",
             "stream", "stream_options", "temperature", "top_p", "user")
# the request fields of OpenAI's API reference, per endpoint (deprecated ones included: SDKs still send them)
OPENAI_FIELDS: Mapping[str, frozenset[str]] = {
    "chat/completions": frozenset({
        *_SAMPLING, "model", "messages", "audio", "function_call", "functions", "max_completion_tokens", "metadata",
        "modalities", "parallel_tool_calls", "prediction", "prompt_cache_key", "reasoning_effort", "response_format",
        "safety_identifier", "service_tier", "store", "tool_choice", "tools", "top_logprobs", "verbosity",
        "web_search_options"}),
    "completions": frozenset({*_SAMPLING, "model", "prompt", "best_of", "echo", "suffix"}),
    "embeddings": frozenset({"model", "input", "dimensions", "encoding_format", "user"}),
}
# every field a model server may read as the length of one completion: vLLM reads max_completion_tokens
# before max_tokens, Ollama's OpenAI layer only max_tokens, llama.cpp n_predict then max_tokens, TGI
# max_new_tokens, Ollama's own API num_predict. The call's length is the largest; each one present is held
# to it and max_tokens is always written, so whichever a server reads, it generates no more
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict", "max_new_tokens", "num_predict")
# vLLM's lower bound on a completion's length: it lengthens the call as much as the others
MIN_LENGTH_FIELD = "min_tokens"
# completions generated for one call: n returned, best_of generated server-side (vLLM, OpenAI's legacy API),
# n_cmpl (llama.cpp's spelling of n)
CHOICE_FIELDS = ("n", "best_of", "n_cmpl")
MAX_CHOICES = 128  # OpenAI's own bound on n
# extensions that cannot be enabled: what they carry cannot be costed or capped
UNFORWARDABLE = {"options": "Ollama's options object carries num_predict and other settings inside it"}
# content parts that make the model server fetch a URL (vLLM does, for multimodal models): from the model
# host's network, and of a size nobody costed. Only data: URLs go, unless upstream.remote_media is on
MEDIA_PARTS = {"image_url": "image_url", "video_url": "video_url", "audio_url": "audio_url"}
_SHOWN_NAME = 64


class Fields:
    """The fields forwarded per endpoint: OpenAI's and the operator's `extra`; `unknown` says what becomes of
    the rest; `remote_media` lets content parts name URLs the model server would fetch."""

    def __init__(self, extra: Iterable[str] = (), unknown: UnknownFields = "refuse",
                 remote_media: bool = False) -> None:
        self.extra = frozenset(extra)
        for name in self.extra & UNFORWARDABLE.keys():
            raise ConfigError(f"upstream.extra_fields: {name!r} cannot be forwarded: {UNFORWARDABLE[name]}, "
                              "which floodwall cannot cost or cap")
        self.unknown = unknown
        self.remote_media = remote_media
        self.allowed = {endpoint: fields | self.extra for endpoint, fields in OPENAI_FIELDS.items()}

    def apply(self, endpoint: str, body: dict[str, Any]) -> None:
        """Refuse (400 naming the field) or drop what `endpoint` does not forward."""
        allowed = self.allowed[endpoint]
        unknown = [name for name in body if name not in allowed]
        if unknown and self.unknown == "drop":
            for name in unknown:
                del body[name]
        elif unknown:
            name = shown(unknown[0][:_SHOWN_NAME])
            raise ApiError(400, f"Unrecognized request argument supplied: {name}", "unknown_parameter",
                           param=name, reason="invalid_body/unknown-field")
        if not self.remote_media and endpoint == "chat/completions":
            _data_urls_only(body.get("messages"))


def _data_urls_only(messages: object) -> None:
    """Refuse a content part whose media is a URL to fetch rather than data carried in the request."""
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for number, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            field = MEDIA_PARTS.get(kind) if isinstance(kind, str) else None
            media = part.get(field) if field is not None and isinstance(part, dict) else None
            url = media.get("url") if isinstance(media, dict) else media
            if isinstance(url, str) and url[:5].lower() != "data:":
                param = f"messages[{index}].content[{number}].{field}.url"
                raise ApiError(400, f"Invalid '{param}': media must be sent as data (a data: URL) here; this "
                               "service does not fetch URLs for the model.", "remote_media_not_allowed",
                               param=param, reason="invalid_body/remote-media")


def _ints(body: Mapping[str, Any], fields: Iterable[str]) -> list[int]:
    return [v for f in fields if isinstance(v := body.get(f), int) and not isinstance(v, bool)]


def completion_length(body: Mapping[str, Any]) -> int | None:
    """The longest completion the length fields (and min_tokens) ask for (None: no field sets one)."""
    asked = _ints(body, (*LENGTH_FIELDS, MIN_LENGTH_FIELD))
    return max(asked) if asked else None


def choices(body: Mapping[str, Any]) -> tuple[int, str]:
    """How many completions the call generates, and the field that says so ("n" when none does)."""
    counts = [(v, f) for f in CHOICE_FIELDS if isinstance(v := body.get(f), int) and not isinstance(v, bool)]
    return max([(1, "n"), *counts])


def hold_length(body: dict[str, Any], default: int, cap: int | None = None) -> int:
    """The length of each completion the call may generate: what its fields ask (`default` when none does),
    at most `cap`. Where a field or a cap sets it, each length field present is held to it and max_tokens is
    written (over a null one too: the model server reads null as no limit), so that whichever field the model
    server reads, it generates no more. A call that sets no length and meets no cap is left as OpenAI's API has
    it (the model server's own limit: it may reject a written length its context cannot hold), costed at
    `default`, and charged what it used afterwards."""
    asked = completion_length(body)
    if asked is None and cap is None:
        return default
    length = default if asked is None else asked
    if cap is not None:
        length = min(length, cap)
    for field in (*LENGTH_FIELDS, MIN_LENGTH_FIELD):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > length:
            body[field] = length
    written = body.get("max_tokens")
    if not isinstance(written, int) or isinstance(written, bool):  # absent, or null (which validation lets by)
        body["max_tokens"] = length
    return length


# what a media part costs the prompt, whatever its size (vision models: some 500 to 1,500 tokens an image)
MEDIA_TOKENS = 1500
_MEDIA_TYPES = frozenset({*MEDIA_PARTS, "input_audio", "image", "file", "input_image"})
# fields that are settings or labels, not text the model reads
_NOT_PROMPT = frozenset({"model", "role", "type", "user", "stream", "stream_options", "service_tier",
                         "safety_identifier", "prompt_cache_key", "encoding_format", "reasoning_effort",
                         "verbosity", "modalities", "metadata", "store", "tool_choice", "logit_bias"})
_TOKEN_ARRAYS = frozenset({"prompt", "input"})


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """The tokens the model reads before it writes, estimated before the call: 4 characters a token of every
    text the body carries (messages and their tool calls, tools and schemas, stop strings, suffix), one a
    token id in a prompt given as ids, MEDIA_TOKENS a media part. Linear in the body, which is bounded."""
    chars = tokens = 0
    stack: list[tuple[object, bool]] = [(v, k in _TOKEN_ARRAYS) for k, v in body.items() if k not in _NOT_PROMPT]
    while stack:
        value, ids = stack.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            stack.extend((item, ids) for item in value)
        elif isinstance(value, dict):
            if value.get("type") in _MEDIA_TYPES:
                tokens += MEDIA_TOKENS
                continue
            stack.extend((v, False) for k, v in value.items() if k not in _NOT_PROMPT)
        elif ids and isinstance(value, int) and not isinstance(value, bool):
            tokens += 1
    return -(-chars // 4) + tokens
