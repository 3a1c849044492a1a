"""The model server failing, full or slow: OpenAI-shaped 502/503/504 with Retry-After where waiting helps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from floodwall.server import free_port
from tests.conftest import Account, floodwall_process, model_process

CHAT = "floodwall-simulated-chat"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tight_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # one slot, no queue, a slow first token: easy to fill, easy to time out
    with model_process(tmp_path_factory.mktemp("tight"), slots=1, queue_size=0, first_token_delay=1.5,
                       tokens_per_second=50, reply_tokens=4) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(tight_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway")
    with floodwall_process(tmp, f"sqlite:///{tmp / 'fw.db'}", tight_model,
                           env={"FLOODWALL_UPSTREAM_READ_TIMEOUT": "0.5"}) as url:
        yield url


@pytest.fixture(scope="module")
def gateway_without_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("nomodel")
    closed_port = free_port()  # nothing listens there
    with floodwall_process(tmp, f"sqlite:///{tmp / 'fw.db'}", f"http://127.0.0.1:{closed_port}/v1") as url:
        yield url


def _key(base_url: str) -> str:
    account = Account(base_url)
    try:
        return account.new_key()
    finally:
        account.close()


def _assert_refusal(response: httpx.Response, status: int, code: str, retry: bool = True) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"] == "server_error"
    assert response.headers["x-floodwall-reason"]
    if retry:
        assert int(response.headers["retry-after"]) >= 1


def test_unreachable_model_server_is_502_with_retry_after(gateway_without_model: str) -> None:
    key = _key(gateway_without_model)
    for body in ({"model": CHAT, "messages": MESSAGES}, {"model": CHAT, "messages": MESSAGES, "stream": True}):
        response = httpx.post(f"{gateway_without_model}/v1/chat/completions", json=body,
                              headers={"authorization": f"Bearer {key}"})
        _assert_refusal(response, 502, "upstream_unavailable")
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(base_url=f"{gateway_without_model}/v1", api_key=key, max_retries=0).models.list()


def test_slow_model_server_is_504(gateway: str) -> None:
    key = _key(gateway)
    response = httpx.post(f"{gateway}/v1/chat/completions", json={"model": CHAT, "messages": MESSAGES},
                          headers={"authorization": f"Bearer {key}"}, timeout=30)
    _assert_refusal(response, 504, "upstream_timeout")


def test_full_model_server_is_503_model_overloaded(gateway: str, tight_model: str) -> None:
    key = _key(gateway)
    # hold the only slot with a direct, slow request; floodwall's request then finds the server full
    hold_started = threading.Event()

    def hold() -> None:
        with httpx.stream("POST", f"{tight_model}/chat/completions", timeout=30,
                          json={"model": CHAT + "-long", "messages": MESSAGES, "stream": True, "max_tokens": 100}) as r:
            hold_started.set()
            for _ in r.iter_bytes():
                pass

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert hold_started.wait(10)
        response = httpx.post(f"{gateway}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": CHAT, "messages": MESSAGES, "stream": True}, timeout=30)
        _assert_refusal(response, 503, "model_overloaded")
        assert response.headers["x-floodwall-reason"] == "upstream_503"
        with pytest.raises(openai.InternalServerError) as caught:
            openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0).chat.completions.create(
                model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
        assert caught.value.status_code == 503
    finally:
        holder.join(30)


def test_refused_calls_are_not_charged(gateway_without_model: str, tmp_path: Path) -> None:
    account = Account(gateway_without_model)
    try:
        key = account.new_key()
        httpx.post(f"{gateway_without_model}/v1/chat/completions", json={"model": CHAT, "messages": MESSAGES},
                   headers={"authorization": f"Bearer {key}"})
        time.sleep(1.5)  # longer than the usage writer's batching interval (1 s)
        assert account.web.get("/account/usage").json()["requests"] == 0
    finally:
        account.close()
