"""The model server's own figures: how many requests it runs and how many wait, read from its Prometheus
`/metrics` a few times a second. vLLM, llama.cpp (`llama-server --metrics`), Hugging Face TGI and SGLang
publish them; Ollama does not.

Only the named families are read: the body is capped, the lines of those families are found by str.find
(in C, a few passes over the page) and only they reach prometheus_client's parser, and a line longer than any
of these families writes is skipped, so a scrape costs little and never stalls the event loop, whatever the
server sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Literal
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from floodwall import logs
from floodwall.background import cancel
from floodwall.config import ModelServerKind
from floodwall.inference.http1 import Pool

log = logging.getLogger("floodwall.inference")

Kind = ModelServerKind
MAX_BODY = 1024 * 1024  # vLLM's page with a few models and all its histograms is some 200 KiB
MAX_LINE = 4096
# sample lines of one family read at most (a label set per model and engine: a few); a page with more is
# not read at all, so that parsing stays a few hundred lines whatever the server sends
MAX_SAMPLES = 256
# no real server runs or queues more requests than this: a larger figure is not one
MAX_FIGURE = 1e6
# a reading older than this (the server stopped answering) is not admitted by
STALE_AFTER = 2.0


@dataclasses.dataclass(frozen=True)
class Families:
    """The gauges of one kind of server: requests running, requests waiting, and KV-cache use (0 to 1)."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    cache: tuple[str, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset((*self.running, *self.waiting, *self.cache))


# from each server's documentation of its metrics; a family renamed between versions is listed under both names
KINDS: Mapping[Kind, Families] = {
    "vllm": Families(("vllm:num_requests_running",), ("vllm:num_requests_waiting",),
                     ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
    "llamacpp": Families(("llamacpp:requests_processing",), ("llamacpp:requests_deferred",),
                         ("llamacpp:kv_cache_usage_ratio",)),
    "tgi": Families(("tgi_batch_current_size",), ("tgi_queue_size",)),
    "sglang": Families(("sglang:num_running_reqs",), ("sglang:num_queue_reqs",), ("sglang:token_usage",)),
}


@dataclasses.dataclass(frozen=True)
class Reading:
    running: float
    waiting: float
    cache: float | None
    at: float  # time.monotonic() when it was read


class PageError(ValueError):
    """A metrics page that cannot be read as the server's figures."""


def _lines(page: str, name: str) -> list[str]:
    """The sample lines of metric `name` (`name{...} v` or `name v`) in `page` (the text after a newline, so
    that every line starts after one), each at most MAX_LINE long; PageError past MAX_SAMPLES of them."""
    found: list[str] = []
    start = page.find("\n" + name)
    while start != -1:
        end = page.find("\n", start + 1)
        line = page[start + 1:end if end != -1 else len(page)]
        if len(line) <= MAX_LINE and line[len(name):len(name) + 1] in ("{", " ", "\t"):
            found.append(line)
            if len(found) > MAX_SAMPLES:
                raise PageError(f"more than {MAX_SAMPLES} samples of {name}")
        start = page.find("\n" + name, start + 1)
    return found


def detect(text: str) -> Kind | None:
    """The kind of server whose families the page carries (None: none of them)."""
    page = "\n" + text
    for kind, families in KINDS.items():
        if any(_lines(page, name) for name in families.running):
            return kind
    return None


def parse(kind: Kind, text: str, at: float | None = None) -> Reading | None:
    """The gauges summed over their label sets (models, engines), or None if the page has no running gauge."""
    families = KINDS[kind]
    wanted = families.names
    page = "\n" + text  # once, for every family's search
    kept = [line.rstrip("\r") for name in sorted(wanted) for line in _lines(page, name)]
    sums: dict[str, float] = {}
    for line in kept:  # one at a time: a line the parser cannot read is skipped, the rest still count
        with contextlib.suppress(ValueError, IndexError, OverflowError):
            for family in text_string_to_metric_families(line + "\n"):
                for sample in family.samples:
                    value = sample.value
                    if sample.name in wanted and math.isfinite(value) and 0 <= value <= MAX_FIGURE:
                        sums[sample.name] = min(MAX_FIGURE, sums.get(sample.name, 0.0) + value)

    def first(names: tuple[str, ...]) -> float | None:
        return next((sums[name] for name in names if name in sums), None)

    running = first(families.running)
    if running is None:
        return None
    cache = first(families.cache)
    return Reading(running, first(families.waiting) or 0.0, cache, time.monotonic() if at is None else at)


class ModelMetrics:
    """Reads the model server's figures every `interval` seconds; `reading` is the latest fresh one (None when
    there is none: the server publishes none, or stopped answering)."""

    def __init__(self, url: str, kind: Kind | Literal["auto"], interval: float = 0.25,
                 on_reading: Callable[[Reading], None] | None = None) -> None:
        self.url = url
        self.on_reading = on_reading
        self.kind: Kind | None = None if kind == "auto" else kind
        self.auto = kind == "auto"
        self.interval = interval
        parts = urlsplit(url)
        self.pool = Pool(f"{parts.scheme}://{parts.netloc}", connect_timeout=1.0, read_timeout=1.0,
                         max_connections=1)
        if parts.port is not None and not 0 < parts.port < 65536:
            raise ValueError("the port is out of range")
        self._path = (parts.path if parts.path not in ("", "/") else "/metrics") + (
            f"?{parts.query}" if parts.query else "")
        self._latest: Reading | None = None
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def reading(self) -> Reading | None:
        latest = self._latest
        if latest is None or time.monotonic() - latest.at > STALE_AFTER:
            return None
        return latest

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="model-metrics")

    async def stop(self) -> None:
        await cancel(self._task)
        await self.pool.close()

    async def _run(self) -> None:
        found_once = False
        while True:
            try:
                found_once = await self.scrape() is not None or found_once
            except Exception as exc:  # whatever the server sends (or admission makes of it), the poller goes on
                self.failures += 1
                if self.failures == 1 and self.auto and not found_once:
                    # most likely a server that publishes none (Ollama): admission learns from latency
                    logs.event(log, "model_metrics_none", url=self.url, error=repr(exc))
                elif self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                    logs.event(log, "model_metrics_unread", logging.WARNING, url=self.url, error=repr(exc),
                               failures=self.failures)
            # a page that does not answer is asked less and less often, up to every 30 seconds
            await asyncio.sleep(min(30.0, self.interval * 2 ** min(self.failures, 7)))

    async def scrape(self) -> Reading | None:
        """Read the page once; the reading (also kept as the latest), or None if it carries no figures."""
        response = await self.pool.request("GET", self._path)
        try:
            if response.status != 200:
                raise PageError(f"HTTP {response.status}")
            size, chunks = 0, []
            async for chunk in response:
                size += len(chunk)
                if size > MAX_BODY:
                    raise PageError(f"a metrics page over {MAX_BODY} bytes")
                chunks.append(chunk)
        finally:
            response.release()
        text = b"".join(chunks).decode("utf-8", "replace")
        if self.kind is None:
            self.kind = detect(text)
            if self.kind is None:
                raise PageError("no model server figures on the page (vLLM, llama.cpp, TGI, SGLang)")
            logs.event(log, "model_metrics_found", kind=self.kind, url=self.url)
        found = parse(self.kind, text)
        if found is None:
            if self.auto:
                self.kind = None  # the server changed: look again next time
            raise PageError(f"no {self.kind or 'model server'} figures on the page")
        self._latest = found
        self.failures = 0
        if self.on_reading is not None:
            self.on_reading(found)
        return found
