"""Canaries (inference/canaries.py) against what an attacker tries, over real HTTP with the simulated `-echo`
model as tests/inference/test_canaries.py does (found by review). Two weaknesses are recorded as such: a
canary asked for in parts over two calls, and one split between the reasoning and the content."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from floodwall.inference.canaries import Canaries
from tests.conftest import Account, floodwall_process, model_process
from tests.inference.test_canaries import events, post, said

ECHO = "floodwall-simulated-chat-echo"
SECRET = "sk-live-4f9d2a7c1e8b3f60a5d9c2e7"  # 32 characters: a secret the system prompt holds


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with model_process(tmp_path_factory.mktemp("model"), tokens_per_second=5000, reply_tokens=64,
                       first_token_delay=0) as model:
        tmp = tmp_path_factory.mktemp("canaries")
        env = {"FLOODWALL_DEFENSE_LEVEL": "normal", "FLOODWALL_SCREENING_CANARIES": SECRET}
        with floodwall_process(tmp, f"sqlite:///{tmp / 'fw.db'}", model, env=env) as url:
            yield url


@pytest.fixture
def key(gateway: str) -> Iterator[str]:
    account = Account(gateway)
    yield account.new_key()
    account.close()


def chat(secret_as_written: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"Key {secret_as_written} ok"}, {"role": "user", "content": "Hi"}]


def test_a_stream_does_not_give_away_most_of_the_secret(gateway: str, key: str) -> None:
    answer = post(gateway, key, "chat/completions", {"model": ECHO, "messages": chat(SECRET), "stream": True})
    chunks = events(answer.text)
    assert chunks[-1]["error"]["code"] == "canary_leak"
    shown = said(chunks)
    start = shown.find("sk-")
    # measured: 28 of the 32 characters reach the client ("sk-live-4f9d2a7c1e8b3f60a5d9": all but the last token)
    assert start < 0 or len(shown) - start < 4, shown[start:]


@pytest.mark.parametrize("written", [
    pytest.param("\u200b".join(SECRET), id="zero-width-between-characters"),
    pytest.param(SECRET.upper(), id="upper-case"),
    pytest.param(" ".join(SECRET), id="spaced"),
])
def test_the_secret_written_slightly_differently_is_withheld(gateway: str, key: str, written: str) -> None:
    answer = post(gateway, key, "chat/completions", {"model": ECHO, "messages": chat(written)})
    assert answer.status_code == 400, answer.json()["choices"][0]["message"]["content"]


def test_two_calls_recover_the_secret_without_a_strike(gateway: str, key: str) -> None:
    """Neither answer carries the whole canary, so neither is withheld nor struck; together they are it."""
    first = post(gateway, key, "chat/completions", {"model": ECHO, "messages": chat(SECRET[:20])})
    second = post(gateway, key, "chat/completions", {"model": ECHO, "messages": chat(SECRET[16:])})
    assert first.status_code == second.status_code == 200
    a = first.json()["choices"][0]["message"]["content"]
    b = second.json()["choices"][0]["message"]["content"]
    assert SECRET[:20] in a and SECRET[16:] in b


# the watch on its own


def event(delta: dict[str, Any], extra: str = "") -> bytes:
    return (json.dumps({"choices": [{"index": 0, "delta": delta}]})[:-1] + extra + "}").encode()


def test_json_escapes_are_decoded_before_matching() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    assert Canaries([SECRET]).watch().event(b'{"choices":[{"index":0,"delta":{"content":"' + escaped.encode()
                                            + b'"}}]}') == 0


def test_an_event_python_json_reads_but_orjson_does_not_is_still_watched() -> None:
    data = event({"content": SECRET}, ', "logprob": NaN')
    assert json.loads(data)["choices"][0]["delta"]["content"] == SECRET  # what the openai SDK reads
    assert Canaries([SECRET]).watch().event(data) == 0


def test_a_canary_split_between_reasoning_and_content_is_not_found() -> None:
    """Recorded: each field has its own tail, so half in `reasoning_content` and half in `content` passes;
    a UI that shows the reasoning above the answer shows the secret whole."""
    watch = Canaries([SECRET]).watch()
    assert watch.event(event({"reasoning_content": SECRET[:16]})) is None
    assert watch.event(event({"content": SECRET[16:]})) is None
