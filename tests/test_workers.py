"""Several worker processes over one database: concurrent clients, every call served and accounted."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import Account, floodwall_process


@pytest.fixture(scope="module")
def two_workers(database_url: str, model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with floodwall_process(tmp_path_factory.mktemp("workers"), database_url, model_url, args=("--workers", "2")) as url:
        yield url


def test_two_workers_serve_and_account_every_call(two_workers: str) -> None:
    accounts = [Account(two_workers) for _ in range(4)]
    try:
        keys = [a.new_key() for a in accounts]

        def call(i: int) -> int:
            client = openai.OpenAI(base_url=f"{two_workers}/v1", api_key=keys[i % 4], max_retries=0)
            stream = i % 2 == 0
            if stream:
                chunks = list(client.chat.completions.create(
                    model="floodwall-simulated-chat", messages=[{"role": "user", "content": f"n{i}"}],
                    max_tokens=4, stream=True))
                return sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
            reply = client.chat.completions.create(
                model="floodwall-simulated-chat", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=4)
            assert reply.usage is not None
            return reply.usage.completion_tokens

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            assert list(pool.map(call, range(40))) == [4] * 40
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            totals = [a.web.get("/account/usage").json() for a in accounts]
            if all(t["requests"] == 10 for t in totals):
                break
            time.sleep(0.2)
        assert [t["requests"] for t in totals] == [10] * 4
        assert [t["completion_tokens"] for t in totals] == [40] * 4
    finally:
        for a in accounts:
            a.close()
