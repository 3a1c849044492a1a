"""Splitting server-sent events as bytes arrive, however the network cuts them."""

from __future__ import annotations

from floodwall.inference.sse import DONE, EventSplitter, encode, event_data


def test_events_split_across_chunks_in_any_way() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    for size in (1, 2, 3, 7, len(stream)):
        splitter = EventSplitter()
        events = [e for i in range(0, len(stream), size) for e in splitter.feed(stream[i : i + size])]
        assert [event_data(e) for e in events] == [b'{"a":1}', b'{"b":2}', None, DONE]
        assert splitter.rest() == b""


def test_multiline_data_and_unterminated_rest() -> None:
    splitter = EventSplitter()
    assert [event_data(e) for e in splitter.feed(b"event: x\ndata: one\ndata:two\n\ndata: part")] == [b"one\ntwo"]
    assert splitter.rest() == b"data: part"


def test_encode() -> None:
    assert encode({"error": {"code": "x"}}) == b'data: {"error":{"code":"x"}}\n\n'
