"""A simulated OpenAI-compatible model server with real capacity limits. It is not a model: it writes
filler text at a fixed rate, so that floodwall has something to protect in demos, tests and benchmarks.

N generations run at once at T tokens/s each; up to Q more wait in FIFO order; beyond that, 503
(like Ollama's "server busy" and vLLM behind a queue limit). A client that goes away frees its slot.
Test hooks: a model id ending in `-error-midstream` sends an error event inside the 200 stream (as vLLM
does); one ending in `-drop-midstream` closes the connection before the stream ends; one ending in
`-long` writes max_tokens tokens (or the configured maximum) instead of a short reply; one ending in `-echo`
answers with its prompt (the system prompt first), four characters a token, as a model whose instructions
were extracted would.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import math
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from floodwall.config import ModelSettings
from floodwall.inference.upstream import SIMULATED_OWNER as OWNER
from floodwall.sim.slots import QueueFull, Slots

CHAT_MODEL = "floodwall-simulated-chat"
EMBED_MODEL = "floodwall-simulated-embedding"
EMBED_DIMENSIONS = 64
_WORDS = tuple(
    "This is a simulated reply from floodwall's test model, not a real language model. It writes filler text "
    "at a fixed rate so that the gateway in front of it can be demonstrated, tested and measured under load."
    .split()
)


def count_tokens(text: str) -> int:
    """Roughly what a BPE tokenizer gives for English: four characters a token."""
    return max(1, math.ceil(len(text) / 4))


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        parts = []
        for message in body["messages"]:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(str(content or ""))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                      "param": None, "code": code}}
    return JSONResponse(body, status, headers)


class Stats:
    def __init__(self) -> None:
        self.started = self.completed = self.aborted = self.rejected = 0
        # each completed generation's service time (slot taken to last token), newest last, with when it ended
        self.service: collections.deque[tuple[float, float]] = collections.deque(maxlen=100_000)

    def service_times(self, since: float = 0.0) -> list[float]:
        return [took for ended, took in self.service if ended >= since]


class SimulatedModel:
    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.slots = Slots(settings.slots, settings.queue_size)
        self.stats = Stats()

    def app(self) -> Starlette:
        app = Starlette(routes=[
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.generate_endpoint("chat"), methods=["POST"]),
            Route("/v1/completions", self.generate_endpoint("text"), methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/sim/stats", self.stats_endpoint),
            Route("/health", self.health),
            *([Route("/metrics", self.metrics)] if self.settings.metrics else []),
        ])
        if self.settings.response_headers:
            app.add_middleware(_ExtraHeaders, headers=self.settings.response_headers)
        return app

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "simulated": True})

    async def models(self, request: Request) -> Response:
        created = 1735689600
        return JSONResponse({"object": "list", "data": [
            {"id": CHAT_MODEL, "object": "model", "created": created, "owned_by": OWNER},
            {"id": EMBED_MODEL, "object": "model", "created": created, "owned_by": OWNER},
        ]})

    async def stats_endpoint(self, request: Request) -> Response:
        """Counts, and the service time (slot taken to last token) of generations ended since `since` (a
        monotonic time of this process, from `now`): the model's own speed, whatever its callers saw."""
        s = self.stats
        try:
            since = float(request.query_params.get("since", "0"))
        except ValueError:
            since = 0.0
        service = sorted(s.service_times(since))

        def pct(q: float) -> float | None:
            return service[min(len(service) - 1, int(q * len(service)))] if service else None

        return JSONResponse({"simulated": True, "slots": self.settings.slots, "active": self.slots.active,
                             "queued": self.slots.queued, "started": s.started, "completed": s.completed,
                             "aborted": s.aborted, "rejected": s.rejected, "now": time.monotonic(),
                             "service": {"count": len(service), "p50": pct(0.5), "p95": pct(0.95)}})

    async def metrics(self, request: Request) -> Response:
        """vLLM's scheduler gauges, in vLLM's names and labels (model.metrics): requests running, waiting, and
        the KV cache's use (here, the share of slots busy)."""
        labels = f'{{engine="0",model_name="{CHAT_MODEL}"}}'
        running, waiting = self.slots.active, self.slots.queued
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{labels} {float(waiting)}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{labels} {running / max(1, self.settings.slots)}\n")
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "The body is not valid JSON.", "invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error(400, "Expected a JSON object with a 'model'.", "invalid_request_error")
        return body

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                                          and isinstance(inputs[0], int)) else inputs
        if not isinstance(items, list) or not items:
            return _error(400, "'input' must be a string or a non-empty array.", "invalid_request_error")
        base64_wanted = body.get("encoding_format") == "base64"
        data, tokens = [], 0
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else json.dumps(item)
            tokens += count_tokens(text)
            vector = _embed(text)
            embedding: Any = (base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                              if base64_wanted else vector)
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def generate_endpoint(self, kind: str) -> Callable[[Request], Awaitable[Any]]:
        async def endpoint(request: Request) -> Any:
            body = await self._body(request)
            if isinstance(body, Response):
                return body
            if kind == "chat" and not isinstance(body.get("messages"), list):
                return _error(400, "'messages' must be an array.", "invalid_request_error")
            return Generation(self, kind, body)

        return endpoint


def _embed(text: str) -> list[float]:
    digest = b"".join(hashlib.sha256(f"{i}:{text}".encode()).digest() for i in range(EMBED_DIMENSIONS // 32))
    raw = [(b - 127.5) / 127.5 for b in digest[:EMBED_DIMENSIONS]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


class Generation:
    """One completion as an ASGI app: wait for a slot, write tokens at the configured rate."""

    def __init__(self, model: SimulatedModel, kind: str, body: dict[str, Any]) -> None:
        self.model = model
        self.kind = kind
        self.body = body
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        settings = model.settings
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or settings.max_tokens
        self.max_tokens = min(int(limit), settings.max_tokens) if isinstance(limit, int) else settings.max_tokens
        self.name = str(body["model"])
        self.reply_tokens = self.max_tokens if self.name.endswith("-long") else min(self.max_tokens,
                                                                                     settings.reply_tokens)
        prompt = _prompt_text(body)
        self.prompt_tokens = count_tokens(prompt)
        self.echo = [prompt[i:i + 4] for i in range(0, len(prompt), 4)] if self.name.endswith("-echo") else None
        if self.echo is not None:
            self.reply_tokens = min(self.max_tokens, len(self.echo))
        n = body.get("n")
        # n completions, as vLLM writes them (a few at most here: it is a simulation)
        self.choices = min(n, 16) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        work = asyncio.create_task(self._run(send))
        watch = asyncio.create_task(_disconnected(receive))
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            self.model.stats.aborted += 1
            work.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await work
        watch.cancel()

    async def _run(self, send: Send) -> None:
        try:
            await self.model.slots.acquire()
        except QueueFull:
            self.model.stats.rejected += 1
            response = _error(503, "Server busy, please try again: maximum pending requests exceeded.",
                              "server_busy", {"retry-after": "1"})
            await response({"type": "http"}, _never, send)
            return
        self.model.stats.started += 1
        took = time.monotonic()
        try:
            if self.body.get("stream") is True:
                await self._stream(send)
            else:
                await self._whole(send)
            self.model.stats.completed += 1
            ended = time.monotonic()
            self.model.stats.service.append((ended, ended - took))
        finally:
            self.model.slots.release()

    def _token_delay(self) -> float:
        return 1.0 / self.model.settings.tokens_per_second

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        completion_tokens *= self.choices
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def _token(self, i: int) -> str:
        if self.echo is not None:
            return self.echo[i]
        return _WORDS[i % len(_WORDS)] + ("" if i == self.reply_tokens - 1 else " ")

    def _finish_reason(self) -> str:
        return "length" if self.reply_tokens >= self.max_tokens else "stop"

    async def _whole(self, send: Send) -> None:
        await asyncio.sleep(self.model.settings.first_token_delay + self.reply_tokens * self._token_delay())
        text = "".join(self._token(i) for i in range(self.reply_tokens))
        choices: list[dict[str, Any]] = []
        for index in range(self.choices):
            choice: dict[str, Any] = {"index": index, "finish_reason": self._finish_reason(), "logprobs": None}
            if self.kind == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        body = {"id": self.id, "object": "chat.completion" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.name, "choices": choices,
                "usage": self._usage(self.reply_tokens), "system_fingerprint": "floodwall-simulated"}
        await JSONResponse(body)({"type": "http"}, _never, send)

    def _chunk(self, delta: str | None, finish: str | None = None, first: bool = False) -> bytes:
        """One event per completion (n of them), each naming its index."""
        events = b""
        for index in range(self.choices):
            choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
            if self.kind == "chat":
                choice["delta"] = ({"role": "assistant", "content": ""} if first else
                                   {"content": delta} if delta is not None else {})
            else:
                choice["text"] = delta or ""
            events += self._event({"choices": [choice]})
        return events

    def _event(self, fields: dict[str, Any]) -> bytes:
        payload = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                   "created": self.created, "model": self.name, **fields}
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache")]})

        async def emit(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        await asyncio.sleep(self.model.settings.first_token_delay)
        if self.kind == "chat":
            await emit(self._chunk(None, first=True))
        delay = self._token_delay()
        for i in range(self.reply_tokens):
            await asyncio.sleep(delay)
            if i == self.reply_tokens // 2 and self.name.endswith("-error-midstream"):
                await emit(b'data: {"error":{"message":"simulated failure in the middle of the stream",'
                           b'"type":"server_error","param":null,"code":"simulated_error"}}\n\n')
                await emit(b"data: [DONE]\n\n", more=False)
                return
            if i == self.reply_tokens // 2 and self.name.endswith("-drop-midstream"):
                raise ConnectionResetError("simulated drop")
            await emit(self._chunk(self._token(i)))
        await emit(self._chunk(None, finish=self._finish_reason()))
        options = self.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            await emit(self._event({"choices": [], "usage": self._usage(self.reply_tokens)}))
        await emit(b"data: [DONE]\n\n", more=False)


class _ExtraHeaders:
    """Adds `model.response_headers` ("Name: value") to every answer, as a model server behind a proxy of its
    own may: cookies, CORS, upgrades (floodwall relays none of them to its clients)."""

    def __init__(self, app: ASGIApp, headers: list[str]) -> None:
        self.app = app
        self.headers = [(name.strip().lower().encode(), value.strip().encode())
                        for name, _, value in (line.partition(":") for line in headers)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, sending if scope["type"] == "http" else send)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


def app_from_env() -> Starlette:
    """The ASGI factory `floodwall model` serves (settings from the environment, as serve hands them)."""
    import os

    from floodwall import config, logs, server

    text = os.environ.get(config.SETTINGS_ENV)
    settings = config.Settings.from_json(text) if text else config.load()
    logs.setup(settings.log.level, settings.log.format, settings.log.audit_file)
    server.exit_with_parent()
    return SimulatedModel(settings.model).app()
