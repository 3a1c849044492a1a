"""Fixtures for the account tests: a real SMTP server (aiosmtpd) that keeps what it is sent."""

from __future__ import annotations

import email
import re
import time
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from floodwall.server import free_port


class Inbox:
    """An SMTP server's delivery end: every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"

    def wait_for(self, to: str, count: int = 1, timeout: float = 15, subject: str | None = None) -> list[Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if m["To"] == to and subject in (None, m["Subject"])]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no mail for {to}: {[m['To'] for m in self.messages]}")


@pytest.fixture(scope="module")
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def link_in(message: Message, path: str) -> str:
    """The first link to `path` (like "/auth/verify") in a plain-text message."""
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    found = re.search(rf"http://\S+{re.escape(path)}\?token=\S+", body.decode())
    assert found, body
    return found.group(0)
