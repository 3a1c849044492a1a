"""The simulated model server over HTTP: OpenAI shapes, labelled as simulated, 503 when full."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import model_process


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with model_process(tmp_path_factory.mktemp("small"), slots=1, queue_size=1, tokens_per_second=100,
                       reply_tokens=5, first_token_delay=0) as url:
        yield url


def test_models_are_labelled_simulated(small_model: str) -> None:
    models = httpx.get(f"{small_model}/models").json()["data"]
    assert all("simulated" in m["id"] and m["owned_by"] == "floodwall-simulated" for m in models)


def test_stream_ends_with_done_and_usage_when_asked(small_model: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    text = httpx.post(f"{small_model}/chat/completions", json=body).text
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert '"usage":{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}' in events[-2]


def test_full_queue_is_503(small_model: str) -> None:
    body = {"model": "m-long", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True}
    stats = small_model.removesuffix("/v1") + "/sim/stats"

    def hold() -> None:
        httpx.post(f"{small_model}/chat/completions", json=body, timeout=30)

    # one generates, one waits in the queue...
    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    deadline = time.monotonic() + 10
    while httpx.get(stats).json()["queued"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        # ...and the third is turned away, as Ollama does
        response = httpx.post(f"{small_model}/chat/completions", json={**body, "stream": False}, timeout=30)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "server_busy"
        assert httpx.get(stats).json()["rejected"] >= 1
    finally:
        for t in holders:
            t.join(30)
