"""A small HTTP/1.1 client for the one hop every admitted call makes, to the model server: pooled
keep-alive connections, responses parsed by httptools (llhttp, uvicorn's parser), bodies streamed with
flow control. A connection carries one request at a time; bytes the server sends beyond the response
it answers, in the same read or while the connection sits idle, close it. (Bytes that arrive only after the
connection has carried the next request are that request's answer as far as HTTP/1.1 can tell: no client
can tell them apart.) Responses are bounded: at most MAX_HEADERS headers of MAX_HEADER_BYTES in all, a status
from 200 to 599 after at most MAX_INTERIM interim ones. It is our hot path: bench/bare_relay.py measures it
against aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

# a stream the reader has not taken yet stops being read from the socket beyond this many bytes
_HIGH_WATER = 256 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_INTERIM = 8


class ConnectionClosed(Exception):
    """The model server closed the connection (or sent what is not HTTP) before the response ended."""


class Response:
    """One response: status and headers at once, the body read whole or chunk by chunk, then release()."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.status = connection.status
        # names lower-cased, in the order the server sent them
        self.headers = connection.headers

    def get(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    @property
    def content_type(self) -> str:
        return (self.get("content-type") or "").split(";", 1)[0].strip().lower()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._connection.body()

    def release(self) -> None:
        """Give the connection back for the next call if the response ended cleanly; else close it."""
        self._connection.finish()


class Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False  # a request is out and its response not yet released
        self.idle_since = 0.0
        self._timeout = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.received = False  # a byte of this response has arrived
        self.extra = False  # the server sent bytes beyond this response: the connection is not reused
        self._interim = False
        self._interims = 0
        self._header_bytes = 0
        self._until_eof = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._headers_done = False
        self._last_read = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        self.received = True
        self._last_read = self.loop.time()
        if self.complete or not self.busy:
            # bytes nobody asked for (after a response ended, or on an idle connection): not HTTP we trust
            self.extra = True
            if self.transport is not None:
                self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # 101 is no answer of ours
            if not self.complete:
                self._fail(ConnectionClosed(f"the model server sent a malformed response: {exc!r}"))
            if self.transport is not None:
                self.transport.close()
        if (self.extra or self.error is not None) and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self._until_eof and self._headers_done and exc is None and not self.complete:
            self.complete = True  # a body without length ends where the connection does
            self._wake()
        elif not self.complete:
            self._fail(ConnectionClosed("the model server closed the connection"))
        self.pool.forget(self)

    # httptools callbacks; once the response is complete, the parser reads on in the same data as if a
    # second response had begun: the callbacks ignore it, and the connection closes

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete or self._headers_done:  # after the body: a chunked response's trailers, not headers
            return
        self._header_bytes += len(name) + len(value)
        if len(self.headers) >= MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            self._fail(ConnectionClosed("the model server sent too many or too large headers"))
            return
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.complete or self.error is not None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim (103 Early Hints): the answer comes after it
            self._interims += 1
            if self._interims > MAX_INTERIM:
                self._fail(ConnectionClosed("the model server sent interim responses without end"))
            self._interim = True
            self.headers = []
            self._header_bytes = 0
            return
        if not 200 <= status <= 599:
            self._fail(ConnectionClosed(f"the model server answered with status {status}"))
            return
        self.status = status
        self._headers_done = True
        if self.status not in _NO_BODY_STATUSES:
            names = {name for name, _ in self.headers}
            self._until_eof = b"content-length" not in names and b"transfer-encoding" not in names
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete or self.error is not None:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.complete or self._interim or self.error is not None:
            self._interim = False
            return
        # asked now: once the message is done, the parser has reset and answers False
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._cancel_timer()
        self._wake()

    # the caller's side

    async def send(self, request: bytes, read_timeout: float) -> Response:
        self._reset()
        self.busy = True
        self._timeout = read_timeout
        self._arm_timer()
        assert self.transport is not None
        self.transport.write(request)
        while not self._headers_done:
            await self._wait()
        return Response(self)

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= _HIGH_WATER // 4 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                yield chunk
            if self.complete:
                return
            await self._wait()

    def finish(self) -> None:
        self._cancel_timer()
        self.busy = False
        reusable = (self.complete and not self.closed and not self._chunks and self.error is None
                    and self.keep_alive and not self.extra)
        if reusable:
            self.idle_since = self.loop.time()
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self.pool.forget(self)

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None and not self._chunks:
            raise self.error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._cancel_timer()
        self._wake()

    # the read timeout: no byte for `read_timeout` seconds while a response is awaited

    def _arm_timer(self) -> None:
        self._timer = self.loop.call_at(self._last_read + self._timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        if self.complete or self.error is not None:
            return
        if self.loop.time() - self._last_read >= self._timeout:
            self._fail(TimeoutError("the model server sent nothing for the read timeout"))
            if self.transport is not None:
                self.transport.close()
        else:
            self._arm_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Pool:
    """Keep-alive connections to one origin, at most `max_connections` at a time."""

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float, max_connections: int,
                 idle_expiry: float = 4.0, local_address: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        authority = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:  # an IPv6 literal
            authority = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        self.authority = authority
        try:  # encoded once: the idna codec is pure Python, some ten calls on every request
            self._host = authority.encode("idna")
        except UnicodeError:  # an empty label, or one over 63 characters
            raise ValueError(f"not a valid host name in {url!r}") from None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # upstream servers close idle connections after a few seconds (uvicorn, so vLLM: 5 s); retire ours first
        self.idle_expiry = idle_expiry
        self.max_connections = max_connections
        # the address connections come from (the attack simulator speaks from many loopback addresses)
        self.local_addr = (local_address, 0) if local_address else None
        self._idle: collections.deque[Connection] = collections.deque()
        self._open: set[Connection] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def head(self, method: str, path: str, headers: bytes, length: int | None) -> bytes:
        """The request line and headers; `headers` are pre-encoded "Name: value\\r\\n" lines."""
        size = b"" if length is None else b"content-length: %d\r\n" % length
        target = (self.base_path + path).encode("latin-1")
        return b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%s\r\n" % (
            method.encode("ascii"), target, self._host, headers, size)

    async def request(self, method: str, path: str, body: bytes | None = None, headers: bytes = b"") -> Response:
        head = self.head(method, path, headers, None if body is None and method == "GET" else len(body or b""))
        request = head + (body or b"")
        # a connection the server closed while it sat idle shows up only on use: an idempotent request
        # goes again on a fresh one; a POST does not (it may have started a generation)
        attempts = 2 if method == "GET" else 1
        for attempt in range(attempts):
            connection, reused = self._idle_one() or await self._checkout()
            try:
                return await connection.send(request, self.read_timeout)
            except ConnectionClosed:
                stale = reused and not connection.received
                connection.close()
                if not stale or attempt == attempts - 1:
                    raise
            except BaseException:
                connection.close()
                raise
        raise AssertionError("unreachable")

    def _idle_one(self) -> tuple[Connection, bool] | None:
        """A kept connection still fresh (closing the stale ones on the way), without a coroutine; None if none."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.idle_expiry:
                return connection, True
            connection.close()
        return None

    async def _checkout(self) -> tuple[Connection, bool]:
        loop = asyncio.get_running_loop()
        while True:
            idle = self._idle_one()
            if idle is not None:
                return idle
            if len(self._open) + self._connecting < self.max_connections:
                return await self._connect(), False
            # every connection is busy: wait until one is given back or closed
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    async def _connect(self) -> Connection:
        self._connecting += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await asyncio.get_running_loop().create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None, local_addr=self.local_addr)
        finally:
            self._connecting -= 1
        if connection.closed:  # it went in the moment it came
            self._wake()
            raise ConnectionClosed("the model server closed the connection")
        self._open.add(connection)
        return connection

    def put_back(self, connection: Connection) -> None:
        self._idle.append(connection)
        self._wake()

    def forget(self, connection: Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
