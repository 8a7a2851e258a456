"""Structured outputs and tool calls through a real gateway in front of a real replica (the
demo model), with the `openai` client: the gateway forwards the new fields and the streamed
tool-call deltas unchanged, and the replica's 400 naming the field reaches the client."""

import json

import jsonschema
import openai
import pytest
from gwtools import fast_config

from herd.server.launch import ReplicaProcess

ARGS = ("--dtype", "float32", "--device", "cpu", "--served-model-name", "tiny")
SCHEMA = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "n": {"type": "integer", "maximum": 9}},
    "required": ["kind", "n"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "pet", "parameters": SCHEMA}}]
ASK = [{"role": "user", "content": "Which pet?"}]


@pytest.fixture(scope="module")
def replica(tiny_model_dir):
    with ReplicaProcess(tiny_model_dir, *ARGS) as r:
        yield r


async def test_structured_and_tools_through_the_gateway(replica, start_gateway):
    gw = await start_gateway(fast_config([replica.url]))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
    fmt = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA}}
    resp = await client.chat.completions.create(
        model="tiny", messages=ASK, response_format=fmt, max_tokens=40, seed=1, n=2
    )
    for choice in resp.choices:
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)

    stream = await client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80,
        seed=2, stream=True,
    )  # fmt: skip
    calls: dict[int, dict] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"name": d.function.name, "arguments": ""})
                call["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls" and calls
    for call in calls.values():
        assert call["name"] == "pet"
        jsonschema.validate(json.loads(call["arguments"]), SCHEMA)

    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, max_tokens=5,
            tool_choice={"type": "function", "function": {"name": "cat"}},
        )  # fmt: skip
    assert info.value.body["param"] == "tool_choice"
    await client.close()
