"""receive_body's one timer: a body that does not arrive in time is a 408; any other cancel (the client gone,
a shutdown) goes on as a cancel; a body that arrives leaves no timer behind."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from floodwall.bodies import receive_body
from floodwall.errors import ApiError

SCOPE: dict[str, Any] = {"type": "http", "headers": [(b"content-type", b"application/json")]}


def test_a_body_that_does_not_come_is_a_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("floodwall.bodies._body_timeout", lambda scope: 0.05)
    parts = [{"type": "http.request", "body": b"{", "more_body": True}]

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop()
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError

    with pytest.raises(ApiError) as refused:
        asyncio.run(receive_body(SCOPE, receive, 1 << 20))
    assert refused.value.status == 408 and refused.value.code == "request_timeout"


def test_another_cancel_is_not_a_408() -> None:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError

    async def scenario() -> None:
        reading = asyncio.create_task(receive_body(SCOPE, receive, 1 << 20))
        await asyncio.sleep(0.01)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(scenario())


def test_a_body_in_parts_is_joined_and_leaves_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("floodwall.bodies._body_timeout", lambda scope: 0.05)
    parts = [{"type": "http.request", "body": b"}"}, {"type": "http.request", "body": b"{", "more_body": True}]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return parts.pop()

    async def scenario() -> bytes:
        body = await receive_body(SCOPE, receive, 1 << 20)
        await asyncio.sleep(0.1)  # past the timeout: the task goes on uncancelled
        return body

    assert asyncio.run(scenario()) == b"{}"


def test_a_body_that_does_not_come_is_a_408_in_a_task_cancelled_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task may carry a cancel that was caught and not undone (Python 3.11's wait_for drops one that lands as
    its awaitable completes): the body's timer still ends in a 408, as asyncio.timeout did, not in a cancel."""
    monkeypatch.setattr("floodwall.bodies._body_timeout", lambda scope: 0.05)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError

    async def scenario() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)
        assert task.cancelling() == 1
        await receive_body(SCOPE, receive, 1 << 20)

    with pytest.raises(ApiError) as refused:
        asyncio.run(scenario())
    assert refused.value.status == 408


@pytest.mark.parametrize(("headers", "left"), [
    ([(b"content-length", b"2")], 1), ([], 0), ([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], 0)],
    ids=["declared", "undeclared", "chunked-beside-a-length"])
def test_a_body_of_its_declared_length_is_whole_without_the_servers_last_message(
        headers: list[tuple[bytes, bytes]], left: int) -> None:
    """granian sends a body in full with more_body, then an empty last message (a hop through its I/O thread):
    the declared length says the body is whole. Without one, the last message says it; and where the server
    framed the body by chunks (h11 passes both headers on), a Content-Length beside them says nothing."""
    parts = [{"type": "http.request", "body": b"", "more_body": False},
             {"type": "http.request", "body": b"}", "more_body": True},
             {"type": "http.request", "body": b"{", "more_body": True}]

    async def receive() -> dict[str, Any]:
        return parts.pop()

    assert asyncio.run(receive_body({"type": "http", "headers": headers}, receive, 1 << 20)) == b"{}"
    assert len(parts) == left
