"""Bad input gets a clear 4xx in OpenAI's shape (a page for browsers), never a 500 or a hang."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

CHAT = "floodwall-simulated-chat"


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, object] = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    assert response.headers["x-floodwall-reason"]
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"a string"', "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[" * 100_000, "invalid_json"),
    ],
)
def test_malformed_json(http: httpx.Client, auth: dict[str, str], raw: bytes, code: str) -> None:
    response = http.post("/v1/chat/completions", content=raw, headers={**auth, "content-type": "application/json"})
    _error(response, 400, code)


def test_a_body_nested_deeper_than_the_proxy_writes_is_a_400(http: httpx.Client, auth: dict[str, str]) -> None:
    # valid JSON that passes the checks, but deeper than orjson writes upstream (254 levels): not a 500
    raw = (b'{"model": "' + CHAT.encode() + b'", "messages": [{"role": "user", "content": "x"}], "metadata": '
           + b"[" * 300 + b"]" * 300 + b"}")
    response = http.post("/v1/chat/completions", content=raw, headers={**auth, "content-type": "application/json"})
    error = _error(response, 400, "invalid_json")
    assert "nested too deeply" in str(error["message"])


def test_invalid_utf8_is_named(http: httpx.Client, auth: dict[str, str]) -> None:
    response = http.post("/v1/chat/completions", content=b'{"model": "\xff"}',
                         headers={**auth, "content-type": "application/json"})
    assert "UTF-8" in str(_error(response, 400, "invalid_json")["message"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": CHAT}, "messages"),
        ({"model": CHAT, "messages": "hello"}, "messages"),
        ({"model": CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": CHAT, "messages": ["hi"]}, "messages[0]"),
        ({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, "max_tokens"),
        ({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens"),
        ({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
         "stream_options"),
    ],
)
def test_chat_body_checks_name_the_param(http: httpx.Client, auth: dict[str, str], body: dict[str, object],
                                         param: str) -> None:
    error = _error(http.post("/v1/chat/completions", json=body, headers=auth), 400, "invalid_request_error")
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": CHAT}, "prompt"),
        ("/v1/completions", {"model": CHAT, "prompt": {"a": 1}}, "prompt"),
        ("/v1/completions", {"model": CHAT, "prompt": [1, "mixed"]}, "prompt"),
        ("/v1/embeddings", {"model": CHAT}, "input"),
        ("/v1/embeddings", {"model": CHAT, "input": []}, "input"),
        ("/v1/embeddings", {"model": CHAT, "input": "x", "stream": True}, "stream"),
    ],
)
def test_completion_and_embedding_checks(http: httpx.Client, auth: dict[str, str], path: str,
                                         body: dict[str, object], param: str) -> None:
    assert _error(http.post(path, json=body, headers=auth), 400)["param"] == param


def test_huge_body_is_413_without_reading_it_all(http: httpx.Client, auth: dict[str, str]) -> None:
    big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (5 * 2**20) + b'"}]}'
    _error(http.post("/v1/chat/completions", content=big, headers=auth), 413, "body_too_large")

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "x", "prompt": "'
        for _ in range(80):
            yield b"a" * 65536

    # chunked, with no Content-Length: counted while read
    _error(http.post("/v1/completions", content=chunks(), headers=auth), 413, "body_too_large")
    # a form post to the account routes has a much smaller cap
    _error(http.post("/auth/login", content=b"a" * 100_000, headers={"content-type": "application/json"}), 413)


@pytest.mark.parametrize("body", [
    b'{"model": "m", "input": [' + b"[1]," * 70_000 + b"[1]]}",  # 0.6 s of the event loop at a million
    b'{"model": "m", "input": "x", "extra": {' + b",".join(b'"k%d": 1' % n for n in range(70_000)) + b"}}",
], ids=["arrays", "members"])  # (a test's id is in the environment of the servers it starts: not the body)
def test_a_body_of_too_many_json_values_is_refused_before_it_is_built(http: httpx.Client, auth: dict[str, str],
                                                                     body: bytes) -> None:
    error = _error(http.post("/v1/embeddings", content=body, headers={**auth, "content-type": "application/json"}),
                   400, "invalid_json")
    assert "too many JSON values" in error["message"]


@pytest.mark.parametrize("body", [
    {"model": CHAT, "prompt": list(range(70_000))},  # a long prompt as token ids
    {"model": CHAT, "input": [list(range(64))] * 2048},  # OpenAI's 2,048 inputs, as token ids
    {"model": CHAT, "messages": [{"role": "user", "content": "a,b,c\n" * 55_000}]},  # a CSV quoted
], ids=["token-ids", "inputs", "csv"])
def test_large_ordinary_bodies_are_not_refused_as_too_many_values(http: httpx.Client, auth: dict[str, str],
                                                                  body: dict[str, object]) -> None:
    path = "/v1/embeddings" if "input" in body else "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    response = http.post(path, json=body, headers=auth)
    assert "too many JSON values" not in response.text, response.text[:200]


def test_odd_headers(http: httpx.Client, auth: dict[str, str]) -> None:
    body = {"model": CHAT, "messages": [{"role": "user", "content": "x"}]}
    _error(http.post("/v1/chat/completions", json=body, headers={**auth, "content-type": "application/xml"}), 415,
           "unsupported_content_type")
    _error(http.post("/v1/chat/completions", json=body, headers={"authorization": "Basic Zm9vOmJhcg=="}), 401,
           "invalid_api_key")
    _error(http.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer"}), 401)
    _error(http.post("/v1/chat/completions", json=body), 401, "missing_api_key")
    _error(http.get("/v1/models", headers={"authorization": "Bearer " + "x" * 5000}), 401, "invalid_api_key")
    _error(http.get("/account/keys", headers={"cookie": "fw_session=" + "z" * 4000}), 401, "not_signed_in")


def test_bad_content_length_on_the_wire(base_url: str, api_key: str) -> None:
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: nope\r\nConnection: close\r\n\r\n{}")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 4")


def test_unknown_route_and_method(http: httpx.Client) -> None:
    assert "No route GET /v1/nothing" in str(_error(http.get("/v1/nothing"), 404, "not_found")["message"])
    _error(http.get("/wp-admin/setup.php"), 404, "not_found")
    _error(http.put("/v1/chat/completions"), 405, "method_not_allowed")
    _error(http.get("/auth/login", headers={"accept": "application/json"}), 405)


def test_browsers_get_a_readable_page(http: httpx.Client) -> None:
    response = http.get("/no-such-page", headers={"accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in response.text and "not_found" in response.text
    # but API routes stay JSON whatever the Accept header says
    api = http.get("/v1/models", headers={"accept": "text/html"})
    assert api.headers["content-type"].startswith("application/json")


def test_query_strings_and_weird_paths_do_not_break_anything(http: httpx.Client, auth: dict[str, str]) -> None:
    for path in ("/v1/models?x=%00%ff", "/%2e%2e/%2e%2e/etc/passwd", "/static/../pyproject.toml",
                 "/account/keys/%00", "/static/%ff"):
        response = http.get(path, headers=auth)
        assert response.status_code < 500, (path, response.status_code)


@pytest.mark.parametrize("extra", [1, 1.5, True, "text", {"a": 1}, None])
def test_fields_an_endpoint_does_not_take_are_never_a_500(http: httpx.Client, auth: dict[str, str],
                                                           extra: object) -> None:
    """Found by fuzzing: an embeddings body with a stray `messages` that is not a list."""
    response = http.post("/v1/embeddings", json={"model": "floodwall-simulated-embedding", "input": "hello",
                                                 "messages": extra}, headers=auth)
    assert response.status_code < 500, response.text


def test_a_routes_refusals_are_logged_once_per_reason_and_address_then_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    """A flood of wrong keys is one full line per (reason, address) and a summary, not a line a request."""
    import asyncio

    from floodwall import errors

    log = errors.logs.RefusalLog(errors.log, window=0.05)
    wrong = errors.ApiError(401, "Invalid API key.", "invalid_api_key")

    async def flood() -> None:
        for n in range(300):
            log.record(wrong.reason, f"192.0.2.{n % 3}", 401, "api-inference", "normal", "anonymous", "POST",
                       "/v1/chat/completions", peer="127.0.0.1")
        await asyncio.sleep(0.1)

    with caplog.at_level("INFO", logger="floodwall.errors"):
        asyncio.run(flood())
    full = [r for r in caplog.records if r.getMessage() == "refused"]
    summary = [r for r in caplog.records if r.getMessage() == "refused_summary"]
    assert len(full) == 3 and {r.__dict__["address"] for r in full} == {"192.0.2.0", "192.0.2.1", "192.0.2.2"}
    assert full[0].__dict__["peer"] == "127.0.0.1" and full[0].__dict__["reason"] == wrong.reason
    assert len(summary) == 1 and summary[0].__dict__["total"] == 300
    assert summary[0].__dict__["by_reason"] == {wrong.reason: 300}


def test_refusals_logged_outside_a_running_loop_are_written_at_once(caplog: pytest.LogCaptureFixture) -> None:
    from floodwall import errors

    log = errors.logs.RefusalLog(errors.log)
    with caplog.at_level("INFO", logger="floodwall.errors"):
        for _ in range(2):
            log.record("invalid_api_key", "192.0.2.9", 401, "", "", "", "POST", "/v1/models")
    assert [r.getMessage() for r in caplog.records] == ["refused", "refused"]
