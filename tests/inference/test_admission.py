"""Priority access to the model: budgets, caps, a learnt limit, and a queue that serves established first."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from floodwall.errors import ApiError
from floodwall.inference.admission import Admission, AdmissionPolicy, GradientLimit, estimate_cost
from floodwall.principal import Principal
from floodwall.state.memory import MemoryStore

NOW = dt.datetime.now(dt.UTC)


def who(user: int, key: int | None = None) -> Principal:
    return Principal(user, f"u{user}@example.com", NOW, False, key)


def body(max_tokens: int = 10, text: str = "hello") -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def admission(level: str = "normal", **policy: Any) -> Admission:
    data = {"initial_limit": 1, "min_limit": 1, "max_limit": 1, "queue_size": 4, **policy}
    return Admission(AdmissionPolicy.from_data(data, "test"), MemoryStore(), lambda: level)


async def started(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(0.01)
    return task.done() and task.exception() is None


async def test_established_go_first_whatever_the_arrival_order() -> None:
    gate = admission()
    first = await gate.admit(who(1), "established", "normal", body())
    newcomer = asyncio.create_task(gate.admit(who(2), "new", "normal", body()))
    regular = asyncio.create_task(gate.admit(who(3), "established", "normal", body()))
    assert not await started(newcomer) and not await started(regular)
    gate.release(first)
    assert await started(regular) and not await started(newcomer)
    gate.release(regular.result())
    assert await started(newcomer)


async def test_lower_tiers_hold_only_their_share_of_the_limit() -> None:
    gate = admission("under_attack", initial_limit=4, max_limit=4,
                     under_attack={"share": {"new": 0.25}})
    await gate.admit(who(1), "new", "under_attack", body())
    second_new = asyncio.create_task(gate.admit(who(2), "new", "under_attack", body()))
    assert not await started(second_new)  # 25% of 4: one new call at a time
    for user in (10, 11, 12):  # established calls still find room
        await gate.admit(who(user), "established", "under_attack", body())
    assert gate.in_flight == 4
    second_new.cancel()


async def test_full_queue_sheds_the_newest_of_the_lowest_tier() -> None:
    gate = admission(queue_size=2)
    await gate.admit(who(1), "established", "normal", body())
    waiting = [asyncio.create_task(gate.admit(who(20 + i), "new", "normal", body())) for i in range(2)]
    await asyncio.sleep(0.01)
    regular = asyncio.create_task(gate.admit(who(3), "established", "normal", body()))
    await asyncio.sleep(0.01)
    with pytest.raises(ApiError) as shed:
        await waiting[1]
    assert shed.value.status == 503 and shed.value.reason == "admission/new" and shed.value.retry_after
    assert not waiting[0].done() and not regular.done()
    # the queue is full again (one new, one established): another newcomer is turned away at once
    with pytest.raises(ApiError) as turned_away:
        await gate.admit(who(4), "new", "normal", body())
    assert turned_away.value.reason == "admission/new"
    assert gate.shed["new"] == 2
    for task in (*waiting[:1], regular):
        task.cancel()


async def test_waiting_too_long_is_503_and_leaving_frees_the_place() -> None:
    gate = admission(max_wait={"new": "50ms"})
    await gate.admit(who(1), "established", "normal", body())
    with pytest.raises(ApiError) as busy:
        await gate.admit(who(2), "new", "normal", body())
    assert busy.value.code == "model_busy"
    leaving = asyncio.create_task(gate.admit(who(3), "established", "normal", body()))
    await asyncio.sleep(0.01)
    assert gate.queued == 1
    leaving.cancel()
    await asyncio.sleep(0.01)
    assert gate.queued == 0


async def test_token_budgets_refuse_before_the_call_and_reconcile_after() -> None:
    gate = admission(initial_limit=8, max_limit=8, normal={"tokens_per_minute": {"established": 1000}})
    ticket = await gate.admit(who(1, key=5), "established", "normal", body(max_tokens=600))
    with pytest.raises(ApiError) as refused:
        await gate.admit(who(1, key=6), "established", "normal", body(max_tokens=600))
    assert refused.value.status == 429 and refused.value.reason == "tokens/account"
    assert refused.value.type == "tokens"
    # the first call used far less than its estimate: the difference comes back
    gate.release(ticket)
    await gate.reconcile(ticket, used=20)
    await gate.admit(who(1, key=6), "established", "normal", body(max_tokens=600))


async def test_in_flight_cap_per_account() -> None:
    gate = admission(initial_limit=8, max_limit=8, normal={"in_flight": {"new": 2}})
    for _ in range(2):
        await gate.admit(who(1), "new", "normal", body())
    with pytest.raises(ApiError) as refused:
        await gate.admit(who(1), "new", "normal", body())
    assert refused.value.reason == "in-flight/account"
    await gate.admit(who(2), "new", "normal", body())


async def test_under_attack_caps_max_tokens_instead_of_refusing() -> None:
    gate = admission("under_attack", initial_limit=8, max_limit=8, under_attack={"max_tokens": {"new": 64}})
    asked = body(max_tokens=4000)
    await gate.admit(who(1), "new", "under_attack", asked)
    assert asked["max_tokens"] == 64
    unasked: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    await gate.admit(who(2), "new", "under_attack", unasked)
    assert unasked["max_tokens"] == 64
    regular = body(max_tokens=4000)
    await gate.admit(who(3), "established", "under_attack", regular)
    assert regular["max_tokens"] == 4000


def test_cost_estimate() -> None:
    assert estimate_cost(body(max_tokens=100, text="x" * 400), 512) == (104, 100)
    assert estimate_cost({"model": "m", "prompt": "y" * 40}, 512) == (14, 512)
    assert estimate_cost({"model": "m", "input": ["a" * 8, "b" * 8]}, 512) == (8, 0)


def test_gradient_limit_learns_from_latency_and_overload() -> None:
    limit = GradientLimit(initial=8, minimum=1, maximum=64)
    for _ in range(50):  # latency stays at its baseline while the limit is used: it grows
        limit.sample("ttft", 0.05, in_flight=limit.limit)
    grown = limit.limit
    assert grown > 8
    for _ in range(30):  # the model server starts queueing: latency triples, the limit comes down
        limit.sample("ttft", 0.15 + 0.01 * _, in_flight=limit.limit)
    assert limit.limit < grown
    before = limit.limit
    limit.overloaded()
    assert limit.limit < before or before == 1
    idle = GradientLimit(initial=8, minimum=1, maximum=64)
    for _ in range(50):  # not using the limit is no evidence for raising it
        idle.sample("ttft", 0.05, in_flight=1)
    assert idle.limit == 8


def test_bad_admission_policy_is_named() -> None:
    from floodwall.config import ConfigError

    with pytest.raises(ConfigError, match="share"):
        AdmissionPolicy.from_data({"normal": {"share": {"new": 2}}}, "p")
    with pytest.raises(ConfigError, match=r"normal in_flight: .*vip.*one of anonymous, established, new"):
        AdmissionPolicy.from_data({"normal": {"in_flight": {"vip": 2}}}, "p")
    with pytest.raises(ConfigError, match="initial_limit"):
        AdmissionPolicy.from_data({"initial_limit": 0}, "p")
