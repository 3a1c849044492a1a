"""Server-sent events from a byte stream: split into whole events as bytes arrive, nothing held longer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"[DONE]"


class EventSplitter:
    """Feed bytes, get back complete events (the raw text between blank lines, without the blank line)."""

    def __init__(self, max_event_size: int = 16 * 2**20) -> None:
        self._buffer = b""
        self.max_event_size = max_event_size

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + 2 :]
            if event:
                yield event
        if len(buffer) > self.max_event_size:
            raise ValueError("an event larger than the limit")
        self._buffer = buffer

    def rest(self) -> bytes:
        """What the stream left unterminated when it ended."""
        rest, self._buffer = self._buffer.strip(), b""
        return rest


def event_data(event: bytes) -> bytes | None:
    """The data field of one event (multi-line data joined by newlines), or None without one."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def encode(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
