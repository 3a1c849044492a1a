"""Structured logs: one JSON object a line when stderr is not a terminal, readable text when it is.

Call `log.info("event_name", extra={"fields": {...}})` or use `event(logger, name, **fields)`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = _fields(record)
        # the record's own keys win over fields of the same name
        entry.update({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        })
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _RESERVED and not key.startswith("_")}


def event(logger: logging.Logger, name: str, severity: int = logging.INFO, /, **fields: Any) -> None:
    """Log one named event with its fields as structured data."""
    if logger.isEnabledFor(severity):
        if not _RESERVED.isdisjoint(fields):  # a field named like the record's own ("name", "msg") is kept, renamed
            fields = {f"{key}_" if key in _RESERVED else key: value for key, value in fields.items()}
        logger.log(severity, name, extra=fields)


def setup(level: str = "info", fmt: str = "auto", audit_file: str = "") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    audit = logging.getLogger("floodwall.db.audit")
    for old in [h for h in audit.handlers if isinstance(h, logging.FileHandler)]:
        audit.removeHandler(old)
        old.close()
    if audit_file:  # the audit trail in a file of its own, always JSON lines, whatever the log level
        copy = logging.FileHandler(audit_file, encoding="utf-8")
        copy.setFormatter(JsonFormatter())
        audit.addHandler(copy)
        audit.setLevel(logging.INFO)
    # servers' own access logs repeat what floodwall logs; keep their errors
    for name in ("uvicorn.access", "granian.access", "aiohttp.access", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class RefusalLog:
    """Refusals explained without a log line per request: during a flood that would cost more than the
    refusal itself. The first refusal of each (reason, address) in a window is logged in full, and the first
    of each reason even when `max_pairs` pairs are already listed; the rest are counted, and every window ends
    with one summary line of counts per reason (every refusal's) and the top addresses."""

    def __init__(self, logger: logging.Logger, window: float = 10.0, max_pairs: int = 10_000,
                 event: str = "refused") -> None:
        self.log = logger
        self.event = event  # also for requests flagged and let through: "flagged", status None
        self.window = window
        self.max_pairs = max_pairs
        self.counts: dict[tuple[str, str], int] = {}
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.unlisted = 0
        self.total = 0
        self._flusher: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def record(self, reason: str, address: str, status: int | None, klass: str, level: str, tier: str, method: str,
               path: str, **more: Any) -> None:
        if self._flusher is not None and self._loop is not _running_loop():
            self.flush()  # the window's timer belongs to a loop that has ended: it would never run
        self.total += 1
        new_reason = reason not in self.by_reason
        self.by_reason[reason] += 1
        key = (reason, address)
        seen = self.counts.get(key)
        if seen is not None:
            self.counts[key] = seen + 1
            return
        if len(self.counts) >= self.max_pairs:
            self.unlisted += 1
            if not new_reason:
                return
        else:
            self.counts[key] = 1
        event(self.log, self.event, reason=reason, address=address, status=status, klass=klass, defense_level=level,
              tier=tier, method=method, path=path, **more)
        self._flush_later()

    def _flush_later(self) -> None:
        loop = _running_loop()
        if loop is None:  # no loop (a tool, a test): nothing to count the repeats in
            self.flush()
        elif self._flusher is None:
            self._flusher, self._loop = loop.call_later(self.window, self.flush), loop

    def flush(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self._flusher = None
        repeats = self.total - len(self.counts)
        if repeats > 0:
            by_address: collections.Counter[str] = collections.Counter()
            for (_, address), count in self.counts.items():
                by_address[address] += count
            event(self.log, f"{self.event}_summary", window_seconds=self.window, total=self.total,
                  by_reason=dict(self.by_reason.most_common(20)), top_addresses=dict(by_address.most_common(10)),
                  pairs_not_listed=self.unlisted)
        self.counts = {}
        self.by_reason = collections.Counter()
        self.unlisted = 0
        self.total = 0


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
