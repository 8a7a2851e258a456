"""The one SSE parser against the spec's framing rules, fed whole and in every split."""

import json

import pytest

from herd.protocol.sse import DONE, SSEParser, encode, encode_json, parse_block

STREAM = (
    b": keep-alive\n\n"
    b'data: {"a":1}\n\n'
    b"event: ping\nid: 7\ndata:no-space\n\n"
    b"data: line one\ndata: line two\n\n"
    b"data: [DONE]\n\n"
)


def frame(eol: bytes) -> bytes:
    return STREAM.replace(b"\n", eol)


def feed_in_pieces(data: bytes, size: int) -> list:
    parser = SSEParser()
    events = []
    for i in range(0, len(data), size):
        events += parser.feed(data[i : i + size])
    return events + parser.close()


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_every_line_ending_in_every_split(eol, size):
    data = frame(eol)
    events = feed_in_pieces(data, size)
    assert b"".join(e.raw for e in events) == data  # every byte forwarded once, in order
    assert [e.data for e in events] == [
        None,
        '{"a":1}',
        "no-space",
        "line one\nline two",
        "[DONE]",
    ]
    assert events[2].event == "ping" and events[2].id == "7"
    assert events[-1].is_done and events[1].json() == {"a": 1}


def test_mixed_line_endings_in_one_stream():
    data = b"data: a\r\n\ndata: b\n\r\ndata: c\r\r"
    events = feed_in_pieces(data, 1)
    assert [e.data for e in events] == ["a", "b", "c"]


def test_a_trailing_cr_waits_for_a_possible_lf():
    parser = SSEParser()
    assert parser.feed(b"data: x\r\n\r") == []  # the CR may begin a CRLF
    (event,) = parser.feed(b"\n")
    assert event.raw == b"data: x\r\n\r\n" and event.data == "x"


def test_an_endless_event_is_refused_not_buffered():
    parser = SSEParser(max_event_bytes=64)
    with pytest.raises(ValueError):
        parser.feed(b"data: " + b"x" * 100)


def test_unknown_fields_are_reported():
    assert parse_block(b"<html>\n\n").unknown == ("<html>",)
    assert parse_block(b"retry: 10\ndata: x\n\n").unknown == ()


def test_encoding_round_trips():
    obj = {"text": "a\nb", "n": [1, 2]}
    (event,) = SSEParser().feed(encode_json(obj))
    assert event.json() == obj and b"\n" not in encode_json(obj)[:-2]
    (event,) = SSEParser().feed(encode("two\nlines", event="e", id="1"))
    assert (event.data, event.event, event.id) == ("two\nlines", "e", "1")
    assert SSEParser().feed(DONE)[0].is_done
    assert json.loads(encode_json({"x": 1})[6:]) == {"x": 1}
