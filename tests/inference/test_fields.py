"""What a /v1 body carries to the model server (fields.py): OpenAI's fields per endpoint and the enabled
extensions, the rest refused or dropped; and every field that lengthens or multiplies generation, read for
the estimate and held by the caps."""

from __future__ import annotations

from typing import Any

import pytest

from floodwall.config import ConfigError
from floodwall.errors import ApiError
from floodwall.inference import validation
from floodwall.inference.fields import (
    OPENAI_FIELDS,
    Fields,
    choices,
    completion_length,
    hold_length,
    prompt_tokens,
)
from floodwall.inference.terms import estimate_cost
from floodwall.inference.validation import chat_completion, completion


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], **fields}


def test_openai_fields_pass_and_others_are_refused_by_name() -> None:
    fields = Fields()
    body = chat(n=2, tools=[], response_format={"type": "json_object"}, max_completion_tokens=5)
    fields.apply("chat/completions", body)
    assert set(body) == {"model", "messages", "n", "tools", "response_format", "max_completion_tokens"}
    for endpoint, name in (("chat/completions", "guided_json"), ("chat/completions", "best_of"),
                           ("completions", "messages"), ("embeddings", "max_tokens"),
                           ("chat/completions", "chat_template")):
        with pytest.raises(ApiError) as refused:
            fields.apply(endpoint, {"model": "m", name: 1})
        assert refused.value.status == 400 and refused.value.param == name
        assert refused.value.code == "unknown_parameter" and name in refused.value.message
        assert refused.value.reason == "invalid_body/unknown-field"


def test_a_field_name_an_attacker_chose_is_shown_short_and_inert() -> None:
    with pytest.raises(ApiError) as refused:
        Fields().apply("chat/completions", chat(**{"\x1b[31m" + "y" * 10_000: 1}))
    assert refused.value.param is not None and len(refused.value.param) < 80
    assert "\x1b" not in refused.value.message and "\\x1b" in refused.value.message


def test_extensions_the_operator_enables_pass_and_drop_mode_drops_the_rest() -> None:
    fields = Fields(extra=["min_tokens", "top_k"], unknown="drop")
    body = chat(min_tokens=3, top_k=40, guided_json={}, chat_template="{{ evil }}")
    fields.apply("chat/completions", body)
    assert set(body) == {"model", "messages", "min_tokens", "top_k"}
    embed = {"model": "e", "input": "x", "top_k": 1, "dimensions": 8}
    fields.apply("embeddings", embed)  # an extension is forwarded wherever it is enabled
    assert set(embed) == {"model", "input", "top_k", "dimensions"}


def test_every_endpoint_has_its_fields() -> None:
    assert {"messages", "max_completion_tokens", "n"} <= OPENAI_FIELDS["chat/completions"]
    assert {"prompt", "best_of", "n", "suffix"} <= OPENAI_FIELDS["completions"]
    assert "max_tokens" not in OPENAI_FIELDS["embeddings"]


def test_the_longest_length_field_and_the_most_choices_count() -> None:
    # the finding: max_completion_tokens 1 with max_tokens 256 was estimated at 1, and produced 256
    assert completion_length(chat(max_completion_tokens=1, max_tokens=256)) == 256
    assert completion_length(chat(n_predict=900, max_tokens=10)) == 900
    assert completion_length(chat(max_tokens=True)) is None and completion_length(chat()) is None
    assert completion_length(chat(max_tokens=10, min_tokens=300)) == 300  # vLLM's lower bound lengthens it
    assert completion_length(chat(max_new_tokens=70, num_predict=80)) == 80  # TGI's and Ollama's spellings
    assert choices(chat()) == (1, "n") and choices(chat(n=3)) == (3, "n")
    assert choices({"n": 2, "best_of": 5}) == (5, "best_of") and choices({"n_cmpl": 9}) == (9, "n_cmpl")
    prompt, generated = estimate_cost(chat(max_completion_tokens=1, max_tokens=256, n=4), 512)
    assert (prompt, generated) == (14, 1024)
    assert estimate_cost(chat(n_cmpl=3, max_tokens=10), 512)[1] == 30
    assert estimate_cost({"model": "m", "prompt": "x" * 40, "best_of": 3}, 100) == (14, 300)
    assert estimate_cost({"model": "m", "input": "x" * 40, "n": 9}, 100) == (14, 0)


def test_a_cap_holds_every_length_field_and_max_tokens_is_always_written() -> None:
    body = chat(max_completion_tokens=1, max_tokens=256, n_predict=5000, min_tokens=300)
    assert hold_length(body, 512, cap=64) == 64
    assert (body["max_completion_tokens"], body["max_tokens"], body["n_predict"], body["min_tokens"]) == (1, 64, 64, 64)
    # no length asked and no cap: left to the model server's own limit (a written length it cannot hold in
    # its context is a 400 from vLLM or TGI), costed at the default; under a cap, the cap is written
    unset = chat()
    assert hold_length(unset, 512) == 512 and unset == chat()
    capped = chat()
    assert hold_length(capped, 512, cap=64) == 64 and capped["max_tokens"] == 64
    # a server that reads only max_tokens (Ollama's OpenAI layer) is told what max_completion_tokens said
    small = chat(max_completion_tokens=8)
    assert hold_length(small, 512, cap=64) == 8 and small == chat(max_completion_tokens=8, max_tokens=8)
    longer = chat(max_completion_tokens=300, max_tokens=2)
    assert hold_length(longer, 512) == 300 and longer == chat(max_completion_tokens=300, max_tokens=2)
    # a null max_tokens (validation takes it for "not given") is no way past the cap: the model server reads it
    # as no limit, so the cap is written over it, and the call costed at the cap it is held to
    null = chat(max_tokens=None, n=2)
    validation.chat_completion(null)
    assert hold_length(null, 512, cap=64) == 64 and null["max_tokens"] == 64
    assert estimate_cost(null, 512)[1] == 64 * 2
    left = chat(max_tokens=None)
    assert hold_length(left, 512) == 512 and left == chat(max_tokens=None)  # no cap: as OpenAI's API has it


def test_the_prompt_estimate_reads_every_text_the_model_reads() -> None:
    text = "x" * 4000  # 1,000 tokens wherever it is put
    base = prompt_tokens(chat())
    for placed in (chat(tools=[{"type": "function", "function": {"name": "f", "description": text}}]),
                   chat(response_format={"type": "json_schema", "json_schema": {"schema": {"description": text}}}),
                   chat(stop=[text]), chat(prediction={"type": "content", "content": text}),
                   {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                       {"type": "function", "function": {"name": "f", "arguments": text}}]}, {"role": "user",
                                                                                               "content": "x" * 40}]},
                   {"model": "m", "prompt": "x" * 40, "suffix": text}):
        assert prompt_tokens(placed) - base >= 1000, placed
    # a prompt given as token ids: one token an id
    assert prompt_tokens({"model": "m", "prompt": [1] * 100_000}) == 100_000
    assert prompt_tokens({"model": "m", "prompt": [[1] * 10, [2] * 10]}) == 20
    # a media part costs a fixed amount, whatever its size; settings are not prompt
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 400_000}}
    assert prompt_tokens({"model": "m", "messages": [{"role": "user", "content": [image]}]}) == 1500
    assert prompt_tokens({"model": "m" * 4000, "user": "u" * 4000, "temperature": 0.5, "seed": 7}) == 0


def test_media_the_model_server_would_fetch_is_refused_unless_allowed() -> None:
    def with_part(part: dict[str, Any]) -> dict[str, Any]:
        return chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what is this"}, part]}])

    remote: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}},
              {"type": "image_url", "image_url": "https://example.com/a.png"},
              {"type": "video_url", "video_url": {"url": "file:///etc/passwd"}},
              {"type": "audio_url", "audio_url": {"url": "HTTPS://example.com/a.wav"}}]
    for part in remote:
        with pytest.raises(ApiError) as refused:
            Fields().apply("chat/completions", with_part(part))
        assert refused.value.code == "remote_media_not_allowed"
        assert refused.value.param == f"messages[0].content[1].{part['type']}.url"
        Fields(remote_media=True).apply("chat/completions", with_part(part))
    carried = {"type": "image_url", "image_url": {"url": "DATA:image/png;base64,AA"}}
    Fields().apply("chat/completions", with_part(carried))


def test_an_extension_that_cannot_be_costed_cannot_be_enabled() -> None:
    with pytest.raises(ConfigError, match="options"):
        Fields(extra=["top_k", "options"])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("n", 0, "at least 1"), ("n", 129, "at most 128"), ("best_of", 1000, "at most 128"), ("n", "2", "integer"),
    ("max_completion_tokens", 0, "at least 1"), ("n_predict", -1, "at least 1"), ("min_tokens", -1, "at least 0"),
    ("min_tokens", 1.5, "integer"), ("ignore_eos", "yes", "boolean"), ("use_beam_search", 1, "boolean"),
    ("best_of", True, "integer"), ("max_new_tokens", 0, "at least 1"), ("num_predict", -1, "at least 1"),
    ("n_cmpl", 500, "at most 128")])
def test_fields_that_change_generation_are_typed(field: str, value: object, message: str) -> None:
    for check, body in ((chat_completion, chat()), (completion, {"model": "m", "prompt": "p"})):
        with pytest.raises(ApiError) as refused:
            check({**body, field: value})
        assert refused.value.status == 400 and refused.value.param == field and message in refused.value.message


@pytest.mark.parametrize(("fields", "param"), [
    ({"stream_options": {"include_usage": True}, "max_tokens": 0}, "stream_options"),
    ({"stream": False, "stream_options": {"include_usage": True}, "temperature": "0.7"}, "stream_options"),
    ({"stream_options": {"include_usage": 1}, "n": 0}, "include_usage"),
    ({"n": 200, "max_tokens": 0}, "max_tokens"),
    ({"user": 200, "max_tokens": 0}, "max_tokens"),
])
def test_of_several_wrong_fields_the_same_one_is_named_whatever_their_order(fields: dict[str, object],
                                                                              param: str) -> None:
    """The checks run in one fixed order (the stream's options, then the lengths' and counts' minimums, then
    the counts' maximums, then the rest), not in the order the client wrote the fields."""
    for ordered in (fields, dict(reversed(fields.items()))):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **ordered}
        with pytest.raises(ApiError) as refused:
            chat_completion(body)
        assert refused.value.status == 400 and refused.value.param == param, (ordered, refused.value.param)
