"""The central promise over real HTTP: with the model saturated by new accounts, an established one is
still served (and the newcomers are shed with 503 and Retry-After, not left hanging)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Account, floodwall_process, model_process

POLICY = """
[admission]
initial_limit = 2
min_limit = 2
max_limit = 2
queue_size = 6
max_wait = { established = "30s", new = "1s" }
[admission.normal]
share = { established = 1.0, new = 1.0 }
"""


@pytest.fixture(scope="module")
def saturated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("priority")
    (tmp / "policy.toml").write_text(POLICY)
    with model_process(tmp, slots=2, queue_size=64, tokens_per_second=50, reply_tokens=10,
                       first_token_delay=0) as model, \
            floodwall_process(tmp, f"sqlite:///{tmp / 'p.db'}", model,
                              env={"FLOODWALL_EDGE_POLICY": str(tmp / "policy.toml"),
                                   "FLOODWALL_DEFENSE_NEW_ACCOUNT_AGE": "6s",
                                   "FLOODWALL_DEFENSE_LEVEL": "normal"}) as url:
        yield url


def _chat(base: str, key: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "floodwall-simulated-chat", "messages": [{"role": "user", "content": "hi"}]})


def test_established_user_is_served_through_a_flood_of_new_accounts(saturated: str) -> None:
    regular = Account(saturated)
    regular_key = regular.new_key()
    time.sleep(6.1)  # now established; every account made from here on stays new for the test
    newcomers = [Account(saturated) for _ in range(12)]
    keys = [a.new_key() for a in newcomers]
    stop = time.monotonic() + 3

    def flood(key: str) -> list[int]:
        codes = []
        while time.monotonic() < stop:
            response = _chat(saturated, key)
            codes.append(response.status_code)
            if response.status_code == 503:
                assert response.headers["x-floodwall-reason"] == "admission/new"
                assert int(response.headers["retry-after"]) >= 1
                time.sleep(0.05)
        return codes

    with concurrent.futures.ThreadPoolExecutor(len(keys)) as pool:
        floods = [pool.submit(flood, key) for key in keys]
        time.sleep(0.5)  # let the flood fill the model and the queue
        mine = []
        for _ in range(5):
            started = time.monotonic()
            response = _chat(saturated, regular_key)
            mine.append((response.status_code, time.monotonic() - started))
        flood_codes = [c for f in floods for c in f.result()]
    assert [code for code, _ in mine] == [200] * 5
    # each call waits at most for one call in flight to finish (0.2 s) before its own 0.2 s
    assert max(took for _, took in mine) < 2.0
    assert 503 in flood_codes and 200 in flood_codes
    for a in [regular, *newcomers]:
        a.close()


def test_new_account_refused_cleanly_when_its_budget_is_spent(tmp_path: Path, model_url: str) -> None:
    (tmp_path / "policy.toml").write_text(
        "[admission.normal]\ntokens_per_minute = { new = 100 }\n")
    with floodwall_process(tmp_path, f"sqlite:///{tmp_path / 'b.db'}", model_url,
                           env={"FLOODWALL_EDGE_POLICY": str(tmp_path / "policy.toml"),
                                "FLOODWALL_DEFENSE_LEVEL": "normal"}) as url:
        account = Account(url)
        key = account.new_key()
        body = {"model": "floodwall-simulated-chat", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 90}
        first = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100
        second = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        assert second.status_code == 429 and second.headers["x-floodwall-reason"] == "tokens/account"
        assert second.json()["error"]["type"] == "tokens" and int(second.headers["retry-after"]) >= 1
        account.close()
