"""Structured logs: one JSON object a line when stderr is not a terminal, readable text when it is.

Call `log.info("event_name", extra={"fields": {...}})` or use `event(logger, name, **fields)`.
"""

from __future__ import annotations

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
