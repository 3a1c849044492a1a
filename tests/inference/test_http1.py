"""The model server client (inference/http1.py) against small real servers that answer as model servers
may: lengths, chunks, bodies until close, connections cut, garbage, silence."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from floodwall.inference import http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()
        self.reader: asyncio.StreamReader | None = None


@contextlib.asynccontextmanager
async def serve(answer: Callable[[Server, asyncio.StreamWriter], Awaitable[bool]]) -> AsyncIterator[
        tuple[Server, str]]:
    """A server that reads each request head and body, then lets `answer` write; answer returns False to
    hang up."""
    state = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.reader = reader
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                state.requests.append(head + await reader.readexactly(length))
                if not await answer(state, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            state.closed.set()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield state, f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


def pool(url: str, **options: float) -> http1.Pool:
    settings = {"connect_timeout": 2.0, "read_timeout": 5.0, "max_connections": 8, **options}
    return http1.Pool(url, connect_timeout=settings["connect_timeout"], read_timeout=settings["read_timeout"],
                      max_connections=int(settings["max_connections"]))


async def fixed(state: Server, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
    return True


async def test_a_response_with_length_and_the_connection_kept() -> None:
    async with serve(fixed) as (state, url):
        client = pool(url)
        for _ in range(3):
            response = await client.request("POST", "/chat/completions", b'{"a":1}',
                                            b"content-type: application/json\r\n")
            assert response.status == 200
            assert response.content_type == "application/json"
            assert response.get("Content-Length") == "11"
            assert await response.read() == b'{"ok":true}'
            response.release()
        assert state.connections == 1
        assert state.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
        assert b"content-length: 7\r\n" in state.requests[0] and state.requests[0].endswith(b'{"a":1}')
        await client.close()


async def test_a_chunked_stream_arrives_piece_by_piece() -> None:
    gate = asyncio.Event()

    async def chunked(state: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        return True

    async with serve(chunked) as (state, url):
        client = pool(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        chunks = aiter(response)
        assert await anext(chunks) == b"data: 1"  # before the server has sent the rest
        gate.set()
        assert [c async for c in chunks] == [b"data: 2"]
        response.release()
        second = await client.request("POST", "/chat/completions", b"{}")
        assert await second.read() == b"data: 1data: 2"
        second.release()
        assert state.connections == 1
        await client.close()


async def test_a_body_without_length_ends_with_the_connection() -> None:
    async def until_close(state: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe whole body")
        return False

    async with serve(until_close) as (state, url):
        client = pool(url)
        for _ in range(2):
            response = await client.request("GET", "/models")
            assert await response.read() == b"the whole body"
            response.release()
        assert state.connections == 2  # not reused
        await client.close()


async def test_a_connection_cut_mid_body_is_an_error() -> None:
    async def cut(state: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        return False

    async with serve(cut) as (_, url):
        client = pool(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        with pytest.raises(http1.ConnectionClosed):
            await response.read()
        response.release()
        await client.close()


async def test_garbage_is_not_a_response() -> None:
    async def garbage(state: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        return True

    async with serve(garbage) as (_, url):
        client = pool(url)
        with pytest.raises(http1.ConnectionClosed, match="malformed"):
            await client.request("POST", "/chat/completions", b"{}")
        await client.close()


async def test_silence_is_a_read_timeout() -> None:
    async def silent(state: Server, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return True

    async with serve(silent) as (_, url):
        client = pool(url, read_timeout=0.3)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.request("POST", "/chat/completions", b"{}"), 5)
        await client.close()


async def test_a_stream_that_stalls_is_a_read_timeout() -> None:
    async def stall(state: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(30)
        return True

    async with serve(stall) as (_, url):
        client = pool(url, read_timeout=0.3)
        response = await client.request("POST", "/chat/completions", b"{}")
        chunks = aiter(response)
        assert await anext(chunks) == b"abc"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(chunks), 5)
        response.release()
        await client.close()


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def once(state: Server, writer: asyncio.StreamWriter) -> bool:
        await fixed(state, writer)
        return False  # keep-alive announced, then the server hangs up, as idle timeouts do

    async with serve(once) as (state, url):
        client = pool(url)
        for method in ("GET", "POST"):
            response = await client.request(method, "/models", None if method == "GET" else b"{}")
            assert await response.read() == b'{"ok":true}'
            response.release()
            await state.closed.wait()
            state.closed.clear()
            await asyncio.sleep(0.05)
        assert state.connections == 2
        await client.close()


async def test_a_response_left_unread_closes_its_connection() -> None:
    async with serve(fixed) as (state, url):
        client = pool(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        response.release()  # the client went away before the body was read
        await asyncio.wait_for(state.closed.wait(), 5)
        response = await client.request("POST", "/chat/completions", b"{}")
        assert await response.read() == b'{"ok":true}'
        response.release()
        assert state.connections == 2
        await client.close()


def in_turn(answers: list[bytes]) -> Callable[[Server, asyncio.StreamWriter], Awaitable[bool]]:
    """A server's answers, one a request, written whole."""
    left: Iterator[bytes] = iter(answers)

    async def answer(state: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(next(left))
        return True

    return answer


async def test_bytes_after_a_response_close_its_connection_and_the_next_call_is_clean() -> None:
    """A server that writes more than the response it answers, in the same write: a second "response" that
    would have been the next call's (headers, a cookie, a body), garbage, or half a response. The bytes are
    nobody's answer: the connection closes, and the next call gets a clean one on a new connection."""
    smuggled = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: stolen=1\r\n"
                b"Content-Length: 14\r\n\r\n{\"smuggled\":1}")
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    for tail in (smuggled, b"garbage that is not HTTP\r\n\r\n", smuggled[:30]):
        async with serve(in_turn([head + b'{"ok":true}' + tail, head + b'{"second":1}'[:11]])) as (state, url):
            client = pool(url)
            first = await client.request("POST", "/chat/completions", b"{}")
            assert await first.read() == b'{"ok":true}'
            assert [name for name, _ in first.headers] == [b"content-type", b"content-length"]
            first.release()
            second = await client.request("POST", "/chat/completions", b"{}")
            assert second.status == 200 and await second.read() == b'{"second":1'
            assert second.get("set-cookie") is None
            second.release()
            assert state.connections == 2, tail  # the first connection was closed, not reused
            await client.close()


async def test_an_interim_response_is_passed_over() -> None:
    async def hints(state: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        await writer.drain()
        await fixed(state, writer)
        return True

    async with serve(hints) as (state, url):
        client = pool(url)
        for _ in range(2):
            response = await client.request("POST", "/chat/completions", b"{}")
            assert response.status == 200 and response.get("link") is None
            assert await response.read() == b'{"ok":true}'
            response.release()
        assert state.connections == 1
        await client.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\n{}",  # a status the server (granian) cannot send on
    b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"Content-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 103 Early Hints\r\n\r\n" * 9 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
], ids=["000", "099", "600", "101", "101-headers", "70-KiB-header", "9-interim"])
async def test_what_is_no_answer_is_a_closed_connection(answer: bytes) -> None:
    async with serve(in_turn([answer, answer])) as (state, url):
        client = pool(url)
        with pytest.raises(http1.ConnectionClosed):
            response = await client.request("POST", "/chat/completions", b"{}")
            await response.read()
        await asyncio.wait_for(state.closed.wait(), 5)
        await client.close()


async def test_a_chunked_responses_trailers_are_not_its_headers() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Request-Id\r\n\r\n2\r\n{}\r\n0\r\nContent-Type: text/html\r\n"
               b"X-Request-Id: trailer-injected\r\n\r\n")
    async with serve(in_turn([chunked])) as (_state, url):
        client = pool(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        assert await response.read() == b"{}"
        assert response.get("content-type") == "application/json" and response.get("x-request-id") is None
        response.release()
        await client.close()


async def test_cancelling_a_call_hangs_up_on_the_server() -> None:
    async def slow(state: Server, writer: asyncio.StreamWriter) -> bool:
        assert state.reader is not None
        await asyncio.wait_for(state.reader.read(), 30)  # until the client hangs up
        return False

    async with serve(slow) as (state, url):
        client = pool(url)
        call = asyncio.create_task(client.request("POST", "/chat/completions", b"{}"))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # the model server sees the connection go, which is how vLLM and Ollama learn to stop generating
        await asyncio.wait_for(state.closed.wait(), 5)
        await client.close()


async def test_a_large_body_is_read_with_bounded_buffering() -> None:
    size = 8 * 1024 * 1024

    async def large(state: Server, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        return True

    async with serve(large) as (_, url):
        client = pool(url)
        response = await client.request("GET", "/big")
        connection = response._connection
        received, peak = 0, 0
        async for chunk in response:
            received += len(chunk)
            peak = max(peak, connection._buffered)
            await asyncio.sleep(0)  # a slow reader: the socket must stop being read, not buffer it all
        assert received == size
        assert peak < 2 * 1024 * 1024
        response.release()
        await client.close()


async def test_max_connections_makes_callers_wait_their_turn() -> None:
    async with serve(fixed) as (state, url):
        client = pool(url, max_connections=1)
        first = await client.request("POST", "/a", b"{}")
        second = asyncio.create_task(client.request("POST", "/b", b"{}"))
        await asyncio.sleep(0.1)
        assert not second.done()
        assert await first.read() == b'{"ok":true}'
        first.release()
        response = await asyncio.wait_for(second, 5)
        assert await response.read() == b'{"ok":true}'
        response.release()
        assert state.connections == 1
        await client.close()


async def test_an_unreachable_server_is_an_os_error() -> None:
    client = pool("http://127.0.0.1:9/v1")
    with pytest.raises(OSError):
        await client.request("POST", "/chat/completions", b"{}")
    await client.close()


def test_the_host_header_names_the_origin() -> None:
    assert b"host: [::1]:8000\r\n" in pool("http://[::1]:8000/v1").head("GET", "/models", b"", None)
    assert b"host: example.com\r\n" in pool("https://example.com/v1").head("GET", "/models", b"", None)
    assert pool("http://127.0.0.1:8000/").head("GET", "/v1/models", b"", None).startswith(b"GET /v1/models ")
    with pytest.raises(ValueError):
        pool("ftp://example.com/v1")
    # the header is encoded once, when the pool is made: a host it cannot carry is refused then, not per call
    for host in ("a..b", "x" * 64 + ".example"):
        with pytest.raises(ValueError, match="not a valid host name"):
            pool(f"http://{host}/v1")
