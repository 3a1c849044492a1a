"""Fixtures for the account tests: a real SMTP server (aiosmtpd) that keeps what it is sent."""

from __future__ import annotations

import email
import itertools
import re
import secrets
import time
from collections.abc import Iterator
from email.message import Message
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from floodwall.server import free_port
from tests.conftest import PASSWORD


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


_networks = itertools.count(1)


def network() -> int:
    """A /24 of loopback that no other test's browser uses."""
    return next(_networks)


def browser(base_url: str, net: int | None = None, host: int = 3, user_agent: str = "browser/1.0") -> httpx.Client:
    """A browser (it keeps its cookies, the device cookie too) from network `net` (a fresh one by default)."""
    n = network() if net is None else net
    return httpx.Client(base_url=base_url, timeout=30, headers={"origin": base_url, "user-agent": user_agent},
                        transport=httpx.HTTPTransport(local_address=f"127.{40 + n // 250}.{n % 250}.{host}"))


def account(base_url: str, net: int | None = None) -> tuple[httpx.Client, str]:
    """A new account, signed in on a browser of its own: the browser and the address."""
    web = browser(base_url, net)
    address = f"a-{secrets.token_hex(5)}@example.org"
    assert web.post("/auth/register", json={"email": address, "password": PASSWORD}).status_code == 201
    assert web.post("/auth/login", json={"email": address, "password": PASSWORD}).status_code == 200
    return web, address
