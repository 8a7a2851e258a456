"""SSE framing through the gateway: a replica may end lines with LF, CRLF or CR (the SSE spec
allows all three); the gateway forwards the stream byte for byte and still accounts it."""

import pytest
from gwtools import chat, fast_config, sse_events


@pytest.mark.parametrize("mode, eol", [("crlf", b"\r\n"), ("cr", b"\r")])
async def test_stream_framed_with_crlf_or_cr_passes_unchanged(fakes, start_gateway, mode, eol):
    gw = await start_gateway(fast_config([fakes[0].url]))
    fakes[0].control(mode=mode, times=1)
    status, headers, body = await gw.post(
        "/v1/chat/completions", chat(stream=True, stream_options={"include_usage": True})
    )
    assert status == 200, body
    assert headers["content-type"].startswith("text/event-stream")
    blocks = body.split(eol + eol)
    assert blocks[0] == b": keep-alive"  # the comment is forwarded too
    assert blocks[-2] == b"data: [DONE]" and blocks[-1] == b""
    assert b"\n" not in body.replace(b"\r\n", b"") if eol == b"\r\n" else b"\n" not in body
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert text and events[-2]["usage"]["completion_tokens"] > 0


async def test_gateway_accounts_a_crlf_stream_like_an_lf_one(fakes, start_gateway):
    gw = await start_gateway(fast_config([fakes[0].url]))
    bodies = {}
    for mode in ("ok", "crlf"):
        fakes[0].control(mode=mode, times=1)
        status, _, body = await gw.post("/v1/chat/completions", chat(stream=True))
        assert status == 200, body
        bodies[mode] = [
            e["choices"][0]["delta"].get("content") for e in sse_events(body) if e != "[DONE]"
        ]
    # The fake numbers its tokens by a running counter: compare the shape, not the words.
    assert len(bodies["ok"]) == len(bodies["crlf"]) > 1
    assert all(isinstance(t, str) and t for t in bodies["crlf"])
