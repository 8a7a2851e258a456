"""Reading output text as tool calls, against the `json` module as reference: the llama3_json
parser takes what vLLM's does and leaves anything else as content; a stream fed one character
at a time sends each call's id and name once, first, and argument pieces that join to the whole
answer's arguments."""

import json

import pytest

from herd.server.tool_calls import ToolCallStream, scan_calls
from herd.server.tool_parsers import PYTHON_TAG, get_parser

NAMES = {"get_weather", "get_time"}
PARSER = get_parser("llama3_json")


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})]),
        (PYTHON_TAG + '{"name": "get_time", "arguments": {}}', [("get_time", {})]),
        (
            ' {"name": "get_time", "parameters": {"zone": "UTC"}}; {"name": "get_weather", "parameters": {"city": "a;b"}}',
            [("get_time", {"zone": "UTC"}), ("get_weather", {"city": "a;b"})],
        ),
        ('[{"name": "get_time", "parameters": {}}]', [("get_time", {})]),
        ('{"name": "get_time", "parameters": "{\\"zone\\": \\"X\\"}"}', [("get_time", {"zone": "X"})]),
    ],
)  # fmt: skip
def test_llama3_json_calls(text, expected):
    content, calls = PARSER.parse(text, NAMES)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == expected


@pytest.mark.parametrize(
    "text",
    [
        "The weather is fine.",
        '{"name": "unknown_fn", "parameters": {}}',
        '{"name": "get_time", "parameters": {}} and some words',
        '{"city": "Paris"}',
        '{"name": "get_time", "parameters": [1]}',
        '{"name": "get_time", "parameters": {',
    ],
)
def test_not_calls_stay_content(text):
    assert PARSER.parse(text, NAMES) == (text, [])


def test_may_start_call():
    assert all(PARSER.may_start_call(t) for t in ["", "  ", " {", "[", "<|py", PYTHON_TAG + "{"])
    assert not any(PARSER.may_start_call(t) for t in ["Hi", " x{", "<b>"])


REQUIRED = json.dumps(
    [
        {"name": "get_weather", "parameters": {"city": 'Pa"r}is', "deep": {"a": [1, {"b": "]"}]}}},
        {"name": "get_time", "parameters": {"zone": "UTC"}},
    ],
    separators=(",", ":"),
)


def fold(stream: ToolCallStream, text: str) -> list[dict]:
    calls: list[dict] = []
    for ch in text:
        for delta in stream.feed(ch):
            for d in delta["tool_calls"]:
                if d["index"] == len(calls):
                    assert d["id"].startswith("call_") and d["function"]["name"]
                    calls.append({"name": d["function"]["name"], "arguments": ""})
                else:
                    assert "id" not in d and "name" not in d["function"]
                calls[d["index"]]["arguments"] += d["function"].get("arguments", "")
    assert stream.finish() == []
    return calls


def test_required_stream_rebuilds_the_calls():
    stream = ToolCallStream("required", PARSER, NAMES)
    calls = fold(stream, REQUIRED)
    reference = json.loads(REQUIRED)
    assert [c["name"] for c in calls] == [r["name"] for r in reference]
    assert [json.loads(c["arguments"]) for c in calls] == [r["parameters"] for r in reference]
    whole = stream.message()["tool_calls"]
    assert [c["function"]["arguments"] for c in whole] == [c["arguments"] for c in calls]


def test_scan_of_every_prefix_is_a_prefix_of_the_whole():
    final = scan_calls(REQUIRED)
    for end in range(len(REQUIRED)):
        for (name, args), (fname, fargs) in zip(scan_calls(REQUIRED[:end]), final, strict=False):
            assert name in (None, fname) and fargs.startswith(args)


def test_named_stream_is_the_arguments():
    stream = ToolCallStream("named", PARSER, NAMES, "get_time")
    calls = fold(stream, '{"zone":"CET"}')
    assert calls == [{"name": "get_time", "arguments": '{"zone":"CET"}'}]


def test_auto_stream_holds_back_then_decides():
    text = '{"name": "get_time", "parameters": {"zone": "UTC"}}'
    stream = ToolCallStream("auto", PARSER, NAMES)
    assert all(stream.feed(ch) == [] for ch in text)  # may be a call: held back
    deltas = stream.finish()
    assert deltas[0]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": ""}
    assert json.loads(deltas[1]["tool_calls"][0]["function"]["arguments"]) == {"zone": "UTC"}
    assert stream.called

    stream = ToolCallStream("auto", PARSER, NAMES)
    out = [d for ch in "  Hello {x}" for d in stream.feed(ch)] + stream.finish()
    assert "".join(d["content"] for d in out) == "  Hello {x}" and not stream.called
