"""One proxied inference call as an ASGI response: sent to the model server, relayed back event by
event without buffering, cancelled when the client goes away, and its token usage recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from floodwall import logs
from floodwall.db.base import utcnow
from floodwall.errors import ApiError, send_error
from floodwall.headers import with_headers
from floodwall.inference import sse
from floodwall.inference.admission import Admission, Ticket
from floodwall.inference.canaries import leak_error
from floodwall.inference.http1 import ConnectionClosed, Response
from floodwall.inference.upstream import Upstream, read_with_timeout, response_headers
from floodwall.inference.usage import UsageRecorder
from floodwall.principal import Principal

log = logging.getLogger("floodwall.inference")

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx and other buffering proxies in front must pass each event on at once
    (b"x-accel-buffering", b"no"),
]


@dataclasses.dataclass
class Outcome:
    """What one call produced, for the usage record and the log."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: str = "ok"
    reported: bool = False
    # the model server accepted the call (so it may have spent tokens on it)
    accepted: bool = False
    chunks: int = 0
    first_token_at: float = 0.0
    finished_at: float = 0.0

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = _int(usage.get("prompt_tokens"))
            self.completion_tokens = _int(usage.get("completion_tokens"))
            self.reported = True


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class InferenceCall:
    """ASGI app for one request to the model server; `body` is the JSON to send upstream."""

    def __init__(
        self,
        upstream: Upstream,
        recorder: UsageRecorder,
        admission: Admission,
        principal: Principal,
        endpoint: str,
        body: dict[str, Any],
        tier: str = "established",
        level: str = "normal",
        after: Callable[[], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.after = after  # run once this app has returned (the prompt's scoring left aside)
        self.recorder = recorder
        self.admission = admission
        self.principal = principal
        self.endpoint = endpoint
        self.tier = tier
        self.level = level
        self.body = body
        self.prompt_chars = 0
        self._reconcile: tuple[Ticket, Outcome] | None = None
        self._ticket: Ticket | None = None
        self.model = str(body.get("model", ""))[:200]
        self.stream = body.get("stream") is True
        self.client_wants_usage = False
        if self.stream:
            options = body.get("stream_options") or {}
            self.client_wants_usage = options.get("include_usage") is True
            # always ask for usage, so every streamed call is accounted; the client sees it only if it asked
            body["stream_options"] = {**options, "include_usage": True}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            outcome = Outcome()
            task = asyncio.current_task()
            assert task is not None
            watch = DisconnectWatch(receive, task)
            try:
                await self._relay(scope, send, outcome)
            except asyncio.CancelledError:
                # the client left: the cancelled upstream connection is closed, and vLLM and Ollama abort a
                # generation whose connection is closed
                if not watch.fired or task.uncancel() > 0:
                    raise
                outcome.status = "cancelled"
            finally:
                watch.stop()
                self._account(outcome)
            if self._reconcile is not None:
                ticket, done = self._reconcile
                await self.admission.reconcile(ticket, done.prompt_tokens + done.completion_tokens)
        finally:
            if self.after is not None:
                # once this app has returned: the server ends the answer then, not when its last byte was sent
                asyncio.get_running_loop().call_soon(self.after)

    async def _relay(self, scope: Scope, send: Send, outcome: Outcome) -> None:
        try:
            ticket = await self.admission.admit(self.principal, self.tier, self.level, self.body)
        except ApiError as error:
            outcome.status = error.reason
            await send_error(scope, send, error)
            return
        overloaded = False
        self._ticket = ticket
        try:
            try:
                payload = orjson.dumps(self.body)
            except orjson.JSONEncodeError:  # orjson writes at most 254 levels of nesting
                await send_error(scope, send, ApiError(400, "The request body is nested too deeply.",
                                                       "invalid_json"))
                return
            self.prompt_chars = len(payload)
            try:
                response = await self.upstream.open("POST", "/" + self.endpoint, payload)
            except ApiError as error:
                outcome.status = error.reason
                overloaded = error.status in (503, 504)
                await send_error(scope, send, error)
                return
            outcome.accepted = True
            try:
                # the token budget's headers go in the answer's own (not a wrapper of send: it costs each message)
                if self.stream and response.content_type == "text/event-stream":
                    await self._relay_stream(response, send, outcome, ticket.headers)
                else:
                    await self._relay_whole(scope, response, send, outcome, ticket.headers)
            finally:
                response.release()
        finally:
            latency = None  # (a stream's time to first token was sampled when it came: Admission.first_token)
            if not outcome.first_token_at and outcome.finished_at:
                parts = outcome.completion_tokens + 1
                latency = ("tpot", (outcome.finished_at - ticket.started) / parts, parts)
            self.admission.release(ticket, latency=latency, overloaded=overloaded)
            self._reconcile = (ticket, outcome)

    async def _relay_whole(self, scope: Scope, response: Response, send: Send, outcome: Outcome,
                           extra: list[tuple[bytes, bytes]]) -> None:
        try:
            raw = await read_with_timeout(response)
        except ApiError as error:
            outcome.status = error.reason
            await send_error(scope, with_headers(send, extra), error)
            return
        outcome.finished_at = time.monotonic()
        try:
            answer: Any = orjson.loads(raw)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            outcome.take_usage(answer.get("usage"))
        canaries = self.upstream.canaries
        leak = canaries.in_answer(answer, raw) if canaries else None
        if leak is not None:
            self._withhold(leak, outcome)
            await send_error(scope, with_headers(send, extra), leak_error())
            return
        headers = [*response_headers(response), (b"content-length", str(len(raw)).encode()), *extra]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    async def _relay_stream(self, response: Response, send: Send, outcome: Outcome,
                            extra: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [*_STREAM_HEADERS, *extra]})
        splitter = sse.EventSplitter()
        finished = False
        # the model's text, watched for the operator's canaries: the event that completes one is not sent, nor
        # those since the text began to spell one (`held`)
        watch = self.upstream.canaries.watch() if self.upstream.canaries else None
        leak: int | None = None
        held: list[bytes] = []
        try:
            async for chunk in response:
                for event in splitter.feed(chunk):
                    data = sse.event_data(event)
                    if watch is not None and data is not None and data != sse.DONE and \
                            (leak := watch.event(data)) is not None:
                        break
                    finished = finished or data == sse.DONE
                    out = self._inspect(event, data, outcome)
                    if watch is not None and not finished and watch.pending():
                        held.append(out)
                        continue
                    if held:
                        out, held = b"".join(held) + out, []
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                if leak is not None:
                    break  # the upstream connection is closed on release: the model stops writing
        except (TimeoutError, ConnectionClosed, ValueError) as exc:
            logs.event(log, "upstream_stream_broken", logging.WARNING, error=repr(exc), endpoint=self.endpoint)
        if leak is not None:
            # ended as a failed stream is, with OpenAI's error event, so that SDKs raise; the withheld event's
            # tokens were written all the same
            outcome.chunks += 1
            self._withhold(leak, outcome)
            await send({"type": "http.response.body", "body": sse.encode(leak_error().body()), "more_body": True})
        elif not finished:
            # the model server went away mid-answer: say so in the stream, as OpenAI does, so SDKs raise
            outcome.status = "upstream_disconnected"
            error = ApiError(502, "The model server closed the stream before it finished.", "upstream_disconnected")
            await send({"type": "http.response.body", "body": sse.encode(error.body()), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def _inspect(self, event: bytes, data: bytes | None, outcome: Outcome) -> bytes:
        """The bytes to pass on for one event; notes usage, errors and text length on the way."""
        if data is None or data == sse.DONE:
            return event + b"\n\n"
        has_usage = b'"usage"' in data
        if not has_usage and b'"error"' not in data:
            outcome.chunks += 1
            if not outcome.first_token_at:
                outcome.first_token_at = time.monotonic()
                if self._ticket is not None:
                    self.admission.first_token(self._ticket)
            return event + b"\n\n"
        try:
            chunk = orjson.loads(data)
        except ValueError:
            return event + b"\n\n"
        if not isinstance(chunk, dict):
            return event + b"\n\n"
        if "error" in chunk:
            outcome.status = "upstream_error"
            return event + b"\n\n"
        usage = chunk.get("usage")
        if usage is None or self.client_wants_usage:
            outcome.take_usage(usage)
            return event + b"\n\n"
        outcome.take_usage(usage)
        # the client did not ask for usage: hide the accounting chunk floodwall asked for
        if not chunk.get("choices"):
            return b""
        del chunk["usage"]
        return sse.encode(chunk)

    def _withhold(self, leak: int, outcome: Outcome) -> None:
        """The answer carried canary number `leak`: withheld, logged, counted and struck."""
        outcome.status = "canary_leak"
        self.upstream.canaries.leaked(leak, self.principal, self.tier, self.level, self.endpoint, self.stream)

    def _account(self, outcome: Outcome) -> None:
        if outcome.accepted and not outcome.reported:
            # the model server gave no usage (it ignores stream_options, or the call was cut):
            # estimate (4 characters a prompt token, one token a streamed chunk) so the account is still charged
            outcome.prompt_tokens = self.prompt_chars // 4
            outcome.completion_tokens = outcome.chunks
            if outcome.status == "ok":
                outcome.status = "estimated"
        if outcome.accepted:
            self.recorder.add({
                "user_id": self.principal.user_id, "key_id": self.principal.key_id, "at": utcnow(),
                "endpoint": self.endpoint, "model": self.model, "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens, "status": outcome.status[:20],
            })
        logs.event(log, "inference", user_id=self.principal.user_id, key_id=self.principal.key_id,
                   endpoint=self.endpoint, model=self.model, stream=self.stream, status=outcome.status,
                   prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens)


class DisconnectWatch:
    """Cancels `task` when its client disconnects, watching only calls that last beyond WATCH_AFTER.

    A pending receive() costs granian about 0.2 ms of CPU a call (bench/edge.py latency), more than the
    rest of a short call; a client that leaves within the first 50 ms costs the model little.
    """

    WATCH_AFTER = 0.05

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self.receive = receive
        self.task = task
        self.fired = False
        self._watcher: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(self.WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.fired = True
        self.task.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
