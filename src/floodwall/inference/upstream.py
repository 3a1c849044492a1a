"""The model server client (our own small HTTP/1.1 client, http1.py), and the mapping of its failures to
OpenAI-shaped 502/503/504.
"""

from __future__ import annotations

import contextlib
import json
import time
import typing
from typing import Any
from urllib.parse import urlsplit

from floodwall.config import ConfigError, UpstreamSettings
from floodwall.errors import ApiError
from floodwall.inference.canaries import Canaries
from floodwall.inference.fields import Fields
from floodwall.inference.http1 import ConnectionClosed, Pool, Response
from floodwall.inference.model_metrics import Kind, ModelMetrics, Reading

SIMULATED_OWNER = "floodwall-simulated"
# the model server's response headers a client gets: what describes the answer. The rest is the hop's own
# (connection, transfer-encoding, length), or not the model server's to say to floodwall's clients: cookies,
# CORS, upgrades, proxy and auth challenges, rate-limit figures of its own (floodwall's are the ones that
# count), caching, and who the server is
_RESPONSE_HEADERS = frozenset({b"content-type", b"content-language", b"x-request-id", b"openai-processing-ms",
                               b"openai-version", b"openai-model"})


class Upstream:
    def __init__(self, settings: UpstreamSettings, canaries: Canaries | None = None) -> None:
        self.settings = settings
        # what a call may carry to the model server, and what its answer may not carry back
        self.fields = Fields(settings.extra_fields, settings.unknown_fields, settings.remote_media)
        self.canaries = canaries or Canaries(())
        # the model server gets plain JSON: floodwall reads (and may rewrite) what comes back
        headers = "content-type: application/json\r\naccept-encoding: identity\r\n"
        if settings.api_key:
            headers += f"authorization: Bearer {settings.api_key}\r\n"
        self._headers = headers.encode("latin-1")
        self._pool: Pool | None = None
        self._models: tuple[float, list[str]] = (0.0, [])
        # the model server's own figures, if it publishes them (admission reads them)
        self.metrics: ModelMetrics | None = None
        if settings.metrics != "none" and settings.url:
            parts = urlsplit(settings.url)
            url = settings.metrics_url or f"{parts.scheme}://{parts.netloc}/metrics"
            try:
                self.metrics = ModelMetrics(url, typing.cast(Kind | typing.Literal["auto"], settings.metrics))
            except ValueError as exc:
                raise ConfigError(f"upstream.metrics_url: {url!r} is not an http(s) URL of the metrics page "
                                  f"({exc})") from None
        # floodwall's own simulated model is upstream: the web app says so on every page
        self.simulated = False

    async def start(self) -> None:
        self._pool = Pool(self.settings.url, connect_timeout=self.settings.connect_timeout,
                          read_timeout=self.settings.read_timeout, max_connections=self.settings.max_connections)
        if self.metrics is not None:
            self.metrics.start()

    def figures(self) -> Reading | None:
        """The model server's latest fresh figures (None: it publishes none, or they are stale)."""
        return self.metrics.reading if self.metrics is not None else None

    async def probe(self) -> None:
        """Learn the model list at start-up; a model server that is not up yet is not an error here."""
        with contextlib.suppress(ApiError):
            await self.model_ids(max_age=0)

    async def close(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._pool

    async def open(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send a request; a response that is an error becomes an ApiError here, after its body is read."""
        try:
            response = await self.pool.request(method, path, body, self._headers)
        except TimeoutError:
            raise self.timeout() from None
        except (OSError, ConnectionClosed) as exc:
            raise self.unreachable(exc) from None
        if response.status >= 400:
            try:
                raw = await response.read()
            except (TimeoutError, ConnectionClosed):
                raw = b""
            finally:
                response.release()
            raise self.refusal(response.status, response, raw)
        return response

    async def json(self, method: str, path: str) -> Any:
        response = await self.open(method, path)
        try:
            return json.loads(await read_with_timeout(response))
        except ValueError:
            raise ApiError(502, "The model server sent a response that is not JSON.", "upstream_bad_response") from None
        finally:
            response.release()

    async def model_ids(self, max_age: float = 30.0) -> list[str]:
        """The model server's model ids, cached briefly (the web app asks on every page view)."""
        fetched, ids = self._models
        if time.monotonic() - fetched < max_age and ids:
            return ids
        listing = await self.json("GET", "/models")
        data = listing.get("data") if isinstance(listing, dict) else None
        models = [m for m in data or [] if isinstance(m, dict) and "id" in m]
        ids = [str(m["id"]) for m in models]
        self.simulated = any(m.get("owned_by") == SIMULATED_OWNER for m in models)
        self._models = (time.monotonic(), ids)
        return ids

    # failures, as OpenAI-shaped refusals

    def unreachable(self, exc: BaseException | None = None) -> ApiError:
        return ApiError(502, "The model server could not be reached. Please try again shortly.",
                        "upstream_unavailable", retry_after=self.settings.retry_after)

    def timeout(self) -> ApiError:
        return ApiError(504, "The model server did not answer in time.", "upstream_timeout",
                        retry_after=self.settings.retry_after)

    def refusal(self, status: int, headers: Any, raw: bytes) -> ApiError:
        retry_after = _retry_after(headers.get("retry-after"), self.settings.retry_after)
        if status in (429, 503):
            # the model server is full (vLLM and Ollama answer 503, hosted APIs 429): a wait helps
            return ApiError(503, "The model is busy. Please retry after a short wait.", "model_overloaded",
                            retry_after=retry_after, reason=f"upstream_{status}")
        if status == 504:
            return ApiError(504, "The model server did not answer in time.", "upstream_timeout",
                            retry_after=retry_after)
        if status >= 500:
            return ApiError(502, f"The model server failed (HTTP {status}).", "upstream_error",
                            retry_after=retry_after, reason=f"upstream_{status}")
        # a 4xx is about the request (unknown model, too many tokens): pass the server's own words on
        message, code, param = f"The model server refused the request (HTTP {status}).", "upstream_refused", None
        try:
            error = json.loads(raw)["error"]
            if isinstance(error, dict):
                message = str(error.get("message") or message)
                code = str(error.get("code") or code)
                param = error.get("param") if isinstance(error.get("param"), str) else None
            elif isinstance(error, str):  # Ollama and llama.cpp sometimes say {"error": "text"}
                message = error
        except (ValueError, KeyError, TypeError):
            pass
        return ApiError(status, message, code, param=param, reason=f"upstream_{status}")


def _retry_after(value: str | None, default: float) -> float:
    if value is not None:
        try:
            return max(1.0, float(value))
        except ValueError:
            pass
    return default


def response_headers(response: Response) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in response.headers if name in _RESPONSE_HEADERS]


async def read_with_timeout(response: Response) -> bytes:
    try:
        return await response.read()
    except TimeoutError:
        raise ApiError(504, "The model server did not answer in time.", "upstream_timeout") from None
    except ConnectionClosed:
        raise ApiError(502, "The model server closed the connection before answering.",
                       "upstream_unavailable") from None
