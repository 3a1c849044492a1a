"""Hostile clients against a real `floodwall serve`, over raw sockets: headers dribbled byte by byte, a
promised body that never comes, oversized headers and bodies, pipelined requests. Each is cut off or
answered within a bounded time (the figures under load come from bench/hostile.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import floodwall_process

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def served(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    env = {"FLOODWALL_SERVER_HEADER_TIMEOUT": f"{HEADER_TIMEOUT}s", "FLOODWALL_SERVER_BODY_TIMEOUT": f"{BODY_TIMEOUT}s",
           "FLOODWALL_SERVER_MAX_HEADER_SIZE": "16KiB"}
    with floodwall_process(tmp, f"sqlite:///{tmp / 'hostile.db'}", model_url, env=env) as base:
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port)


def exchange(address: tuple[str, int], data: bytes, wait: float = 10.0, dribble: bytes = b"") -> tuple[bytes, float]:
    """Send `data` (then `dribble` a byte every 0.3 s); what the server answered, and when it answered or
    closed the connection."""
    with socket.create_connection(address, timeout=wait) as sock:
        started = time.monotonic()
        sock.sendall(data)
        for byte in dribble:
            time.sleep(0.3)
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server closed it: that is the point
                break
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return answer, time.monotonic() - started


def test_headers_dribbled_byte_by_byte_are_cut_off(served: tuple[str, int]) -> None:
    answer, took = exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", dribble=b"X-Slow: " + b"a" * 100)
    assert not answer.startswith(b"HTTP/1.1 200") and took < HEADER_TIMEOUT + 3, (answer[:80], took)


def test_a_body_that_never_arrives_gets_408(served: tuple[str, int]) -> None:
    head = (b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{")
    answer, took = exchange(served, head, dribble=b'"email": "' + b"a" * 100)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer and took < HEADER_TIMEOUT + BODY_TIMEOUT + 3, took


def test_oversized_headers_get_431_and_oversized_bodies_413(served: tuple[str, int]) -> None:
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 32 * 1024 + b"\r\n\r\n"
    answer, took = exchange(served, big)
    assert answer.startswith(b"HTTP/1.1 431") and took < 3, (answer[:80], took)
    huge = (b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\nConnection: close\r\n\r\n")
    answer, took = exchange(served, huge)
    assert answer.startswith(b"HTTP/1.1 413") and took < 3, (answer[:80], took)


def test_pipelined_requests_are_all_answered_in_order(served: tuple[str, int]) -> None:
    requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 200 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n" \
        b"Connection: close\r\n\r\n"
    answer, took = exchange(served, requests)
    assert answer.count(b"HTTP/1.1 200") == 201 and took < 10, (answer.count(b"HTTP/1.1 "), took)
