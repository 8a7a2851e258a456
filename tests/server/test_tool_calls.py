"""Tool calling through a real replica on the demo model, driven by the `openai` client:
tool_choice "required" and named give tool_calls whose arguments validate against the function's
schema (`jsonschema`), streamed (id and name first, then argument pieces) and not; a follow-up
with the tool result in the history works; tools reach the prompt through a template that takes
them, or through herd's fallback; unknown tool names and bad schemas are 400s."""

import json

import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from herd.model.demo import write_demo_model
from herd.server.launch import ReplicaProcess

ENGINE_ARGS = ("--dtype", "float32", "--device", "cpu", "--served-model-name", "tiny")
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "pattern": "^[A-Z]{3}$"}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {"name": "get_time", "description": "now", "parameters": TIME},
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

# A template that reads `tools` (as Llama 3.1's does) and writes earlier calls itself.
TOOLS_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|start_header_id|>system<|end_header_id|>\n\n"
    "Tools: {{ tools | tojson }}<|eot_id|>{% endif %}"
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message.tool_calls %}{% for c in message.tool_calls %}"
    '{"name": "{{ c.function.name }}", "parameters": {{ c.function.arguments | tojson }}}'
    "{% endfor %}{% else %}{{ message['content'] }}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def replica(tiny_model_dir):
    with ReplicaProcess(tiny_model_dir, *ENGINE_ARGS) as r:
        yield r


@pytest.fixture(scope="module")
def client(replica):
    return openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)


def check_calls(calls, parallel: bool = True) -> None:
    assert calls and (parallel or len(calls) == 1)
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def streamed_calls(stream) -> tuple[list[dict], str | None]:
    """Tool calls folded from a stream as a client does; each call's first delta must carry its
    id and name, later ones only argument pieces."""
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                if d.index not in calls:
                    assert d.id and d.function.name and d.type == "function"
                    calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
                else:
                    assert d.id is None and d.function.name is None
                calls[d.index]["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish


def test_required_tool_calls_validate(client):
    for seed in range(3):
        resp = client.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
            seed=seed, n=2,
        )  # fmt: skip
        for choice in resp.choices:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            check_calls(choice.message.tool_calls)


def test_required_streamed_equals_whole(client):
    kw = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200)
    for seed in range(3):
        whole = client.chat.completions.create(seed=seed, **kw).choices[0].message.tool_calls
        calls, finish = streamed_calls(client.chat.completions.create(seed=seed, stream=True, **kw))
        assert finish == "tool_calls"
        assert [(c["name"], c["arguments"]) for c in calls] == [
            (c.function.name, c.function.arguments) for c in whole
        ]
        for c in calls:
            jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])


def test_parallel_tool_calls_false_gives_one_call(client):
    for seed in range(3):
        resp = client.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
            parallel_tool_calls=False, max_tokens=200, seed=seed,
        )  # fmt: skip
        check_calls(resp.choices[0].message.tool_calls, parallel=False)


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_calls_that_function(client, stream):
    choice = {"type": "function", "function": {"name": "get_time"}}
    kw = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=60, seed=4)
    if stream:
        calls, _ = streamed_calls(client.chat.completions.create(stream=True, **kw))
        assert [c["name"] for c in calls] == ["get_time"]
        jsonschema.validate(json.loads(calls[0]["arguments"]), TIME)
    else:
        calls = client.chat.completions.create(**kw).choices[0].message.tool_calls
        assert [c.function.name for c in calls] == ["get_time"]
        check_calls(calls)


def test_follow_up_with_the_tool_result(client):
    first = (
        client.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200, seed=1
        )
        .choices[0]
        .message
    )
    history = ASK + [
        first.model_dump(exclude_none=True),
        *(
            {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temp": 21})}
            for c in first.tool_calls
        ),
    ]
    follow = client.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, max_tokens=10, seed=2
    )
    choice = follow.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content is not None or choice.message.tool_calls
    again = client.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, tool_choice="required", max_tokens=200
    )
    check_calls(again.choices[0].message.tool_calls)


def test_auto_and_none_leave_the_model_free(client):
    for tool_choice in ("auto", "none"):
        resp = client.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=8, seed=3
        )
        msg = resp.choices[0].message
        assert msg.tool_calls is None and isinstance(msg.content, str)  # a random model's text


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ],
)  # fmt: skip
def test_bad_tools_are_400(client, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=5, **extra)
    assert info.value.body["param"] == param


@pytest.fixture(scope="module")
def tools_template_model(tmp_path_factory):
    path = write_demo_model(tmp_path_factory.mktemp("tools-template"))
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = TOOLS_TEMPLATE
    config_file.write_text(json.dumps(config))
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return path


def prompt_text(client, model_dir, messages) -> str:
    resp = client.chat.completions.create(
        model="tiny", messages=messages, tools=TOOLS, max_tokens=1,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    ids = resp.model_extra["prompt_token_ids"]
    return AutoTokenizer.from_pretrained(str(model_dir)).decode(ids)


def test_tools_reach_the_prompt_through_a_template_that_takes_them(tools_template_model):
    history = ASK + [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]
    with ReplicaProcess(tools_template_model, *ENGINE_ARGS) as r:
        client = openai.OpenAI(base_url=r.url + "/v1", api_key="none", max_retries=0)
        text = prompt_text(client, tools_template_model, history)
    assert "Tools: [" in text and '"get_time"' in text
    assert "You can call these functions" not in text  # the template's own rendering
    assert '"parameters": {"city": "Paris"}' in text  # arguments handed over as an object
    assert "21 C" in text


def test_fallback_prompt_for_a_template_without_tools(client, tiny_model_dir):
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]
    text = prompt_text(client, tiny_model_dir, history)
    assert "You can call these functions" in text and '"name": "get_time"' in text
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}' in text
    assert "tool<|end_header_id|>" in text and "21 C" in text


def test_streamed_calls_of_n_choices_stay_apart(client):
    kw = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200)
    calls: dict[tuple[int, int], dict] = {}
    finish = {}
    for chunk in client.chat.completions.create(seed=5, n=3, stream=True, **kw):
        indexes = [c.index for c in chunk.choices]
        assert len(indexes) == len(set(indexes))  # a choice at most once per chunk
        for choice in chunk.choices:
            finish[choice.index] = choice.finish_reason or finish.get(choice.index)
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault((choice.index, d.index), {"name": None, "arguments": ""})
                call["name"] = call["name"] or d.function.name
                call["arguments"] += d.function.arguments or ""
    whole = client.chat.completions.create(seed=5, n=3, **kw)
    assert finish == {0: "tool_calls", 1: "tool_calls", 2: "tool_calls"}
    for choice in whole.choices:
        got = [calls[k] for k in sorted(calls) if k[0] == choice.index]
        assert [(c["name"], c["arguments"]) for c in got] == [
            (t.function.name, t.function.arguments) for t in choice.message.tool_calls
        ]
