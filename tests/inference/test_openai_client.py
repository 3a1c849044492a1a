"""The official openai client, unchanged, through floodwall: streaming and not, usage on account and key."""

from __future__ import annotations

import base64
import time

import httpx
import openai
import pytest

from tests.conftest import Account

CHAT = "floodwall-simulated-chat"


def client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)


def wait_for_usage(account: Account, requests: int, timeout: float = 10.0) -> dict[str, int]:
    """Usage is written in batches a moment after the response; poll for it."""
    deadline = time.monotonic() + timeout
    while True:
        totals: dict[str, int] = account.web.get("/account/usage").json()
        if totals["requests"] >= requests or time.monotonic() > deadline:
            return totals
        time.sleep(0.1)


def test_models(base_url: str, api_key: str) -> None:
    ids = [m.id for m in client(base_url, api_key).models.list()]
    assert CHAT in ids


def test_chat_completion_and_usage_on_account_and_key(base_url: str, account: Account, api_key: str) -> None:
    reply = client(base_url, api_key).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hello there, model."}], max_tokens=5
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    totals = wait_for_usage(account, 1)
    assert totals == {"requests": 1, "prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": 5}
    (key,) = account.web.get("/account/keys").json()["data"]
    assert key["usage"] == {"prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": 5}
    assert key["last_used_at"] is not None


def test_streaming_relays_chunks_and_records_usage_without_showing_it(
    base_url: str, account: Account, api_key: str
) -> None:
    stream = client(base_url, api_key).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Stream please"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("This is a simulated reply")
    # the client did not ask for usage: floodwall asked for it upstream and kept it to itself
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    totals = wait_for_usage(account, 1)
    assert totals["requests"] == 1 and totals["completion_tokens"] == 12 and totals["prompt_tokens"] > 0


def test_streaming_usage_chunk_when_asked(base_url: str, account: Account, api_key: str) -> None:
    stream = client(base_url, api_key).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Stream please"}], stream=True,
        stream_options={"include_usage": True}, max_tokens=3,
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert wait_for_usage(account, 1)["completion_tokens"] == 3


def test_legacy_completions_streaming_and_not(base_url: str, account: Account, api_key: str) -> None:
    c = client(base_url, api_key)
    whole = c.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=4)
    assert whole.choices[0].text and whole.usage is not None and whole.usage.completion_tokens == 4
    streamed = "".join(part.choices[0].text for part in c.completions.create(
        model=CHAT, prompt="Once upon a time", max_tokens=4, stream=True) if part.choices)
    assert streamed == whole.choices[0].text
    assert wait_for_usage(account, 2)["completion_tokens"] == 8


def test_embeddings_float_and_base64(base_url: str, account: Account, api_key: str) -> None:
    c = client(base_url, api_key)
    # the SDK asks for base64 by default and decodes it itself
    result = c.embeddings.create(model="floodwall-simulated-embedding", input=["one", "two"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 64
    floats = c.embeddings.create(model="floodwall-simulated-embedding", input="one", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-5)
    assert base64.b64decode(base64.b64encode(b"x")) == b"x"
    assert wait_for_usage(account, 2)["prompt_tokens"] > 0


def test_error_event_inside_stream_raises_in_client(base_url: str, api_key: str) -> None:
    stream = client(base_url, api_key).chat.completions.create(
        model=CHAT + "-error-midstream", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="simulated failure"):
        list(stream)


def test_upstream_dropping_mid_stream_becomes_an_error(base_url: str, api_key: str) -> None:
    stream = client(base_url, api_key).chat.completions.create(
        model=CHAT + "-drop-midstream", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="closed the stream"):
        list(stream)


def test_bad_key_is_openai_authentication_error(base_url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(base_url, "fw_not-a-real-key").models.list()
    assert caught.value.code == "invalid_api_key"
    assert caught.value.response.headers["x-floodwall-reason"] == "invalid_api_key"


def test_revoked_key_stops_working(base_url: str, account: Account) -> None:
    key = account.new_key("short-lived")
    assert client(base_url, key).models.list()
    key_id = account.web.get("/account/keys").json()["data"][0]["id"]
    assert account.web.delete(f"/account/keys/{key_id}").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client(base_url, key).models.list()


def test_unknown_model_is_passed_on_as_the_model_servers_refusal(base_url: str, api_key: str) -> None:
    # the simulated server accepts any model id; a real one refuses: check the request shape errors instead
    with pytest.raises(openai.BadRequestError) as caught:
        client(base_url, api_key).chat.completions.create(model=CHAT, messages=[])
    assert caught.value.code == "invalid_request_error"
    assert caught.value.param == "messages"


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_the_upstream_generation(base_url: str, model_url: str, api_key: str,
                                                           stream: bool) -> None:
    stats_url = model_url.removesuffix("/v1") + "/sim/stats"
    before = httpx.get(stats_url).json()["aborted"]
    body = {"model": CHAT + "-long", "messages": [{"role": "user", "content": "x"}], "stream": stream,
            "max_tokens": 250}
    headers = {"authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, timeout=30) as http:
        if stream:
            with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["x-accel-buffering"] == "no"
                next(response.iter_bytes())
            # leaving the block closed the connection mid-answer
        else:
            # the whole answer takes 0.6 s; the client gives up before
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/chat/completions", json=body, headers=headers, timeout=0.2)
    deadline = time.monotonic() + 10
    while httpx.get(stats_url).json()["aborted"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(stats_url).json()["aborted"] > before
