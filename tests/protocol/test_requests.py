"""Request models: every field of OpenAI's request types is known (honoured, ignored or refused
by name), types are strict, and every refusal is a 400 naming the parameter."""

import typing

import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from herd.protocol.errors import OpenAIError
from herd.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_body,
    validate_request,
)

MSG = [{"role": "user", "content": "hi"}]
NAMED_G = {"type": "function", "function": {"name": "g"}}


def chat(**kw):
    return validate_request(ChatCompletionRequest, {"messages": MSG, **kw})


def completion(**kw):
    return validate_request(CompletionRequest, {"prompt": "x", **kw})


def refusal(fn, **kw) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        fn(**kw)
    assert info.value.status == 400
    return info.value


def openai_fields(module, base: str) -> set[str]:
    return set(typing.get_type_hints(getattr(module, base), include_extras=True))


@pytest.mark.parametrize(
    "model, module, base",
    [
        (CompletionRequest, completion_create_params, "CompletionCreateParamsBase"),
        (ChatCompletionRequest, chat_create_params, "CompletionCreateParamsBase"),
    ],
)
def test_every_openai_field_is_known(model, module, base):
    """A field OpenAI's client can send is never 'unrecognized': herd decided about each."""
    missing = openai_fields(module, base) - set(model.model_fields)
    assert not missing, f"fields of the openai client unknown to {model.__name__}: {missing}"
    assert "stream" in model.model_fields


def test_every_model_field_is_in_the_docs_table():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for model in (CompletionRequest, ChatCompletionRequest):
        for name in model.model_fields:
            assert f"`{name}`" in doc, f"{name} missing from docs/protocol.md"


def test_ignored_fields_are_accepted():
    req = chat(
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=True,
        user="u",
        safety_identifier="s",
        prompt_cache_key="k",
        prompt_cache_retention="24h",
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
        modalities=["text"],
        reasoning_effort="none",
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
    )
    assert req.user == "u" and req.stream_options.include_usage
    assert completion(suffix="", best_of=1, echo=True).echo


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"verbosity": "low"}, "verbosity"),
        ({"moderation": {"model": "m"}}, "moderation"),
        ({"store": True}, "store"),
        ({"store": 0}, "store"),  # 0 is not false
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": NAMED_G},
            "tool_choice",
        ),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"guided_choice": []}, "guided_choice"),
        (
            {
                "guided_json": {},
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "required",
            },
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"max_tokens": 2, "max_completion_tokens": 3}, "max_completion_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "weight": 1}]}, "messages[0].weight"),
        (
            {"messages": [MSG[0], {"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[1].content[0]",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
            "messages[0].tool_calls[0].type",
        ),
    ],
)
def test_chat_refusals_name_the_param(fields, param):
    err = refusal(chat, **fields)
    assert err.param == param, err.message
    assert param in err.message


@pytest.mark.parametrize(
    "fields, param, code",
    [
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"max_tokens": "3"}, "max_tokens", "invalid_type"),
        ({"max_tokens": 2.5}, "max_tokens", "invalid_type"),
        ({"max_tokens": True}, "max_tokens", "invalid_type"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"temperature": float("nan")}, "temperature", "invalid_value"),
        ({"temperature": float("inf")}, "temperature", "invalid_value"),
        ({"temperature": -0.1}, "temperature", "invalid_value"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"top_p": 1.5}, "top_p", "invalid_value"),
        ({"n": 0}, "n", "invalid_value"),
        ({"presence_penalty": 2.5}, "presence_penalty", "invalid_value"),
        ({"top_k": -2}, "top_k", "invalid_value"),
        ({"min_p": 1.5}, "min_p", "invalid_value"),
        ({"repetition_penalty": 0}, "repetition_penalty", "invalid_value"),
        ({"stop": ""}, "stop", "invalid_value"),
        ({"stop": ["a", 1]}, "stop", "invalid_value"),
        ({"stop": ["s"] * 17}, "stop", "invalid_value"),
        ({"stop_token_ids": [-1]}, "stop_token_ids[0]", "invalid_value"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"-1": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"5": 100.5}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"5": "1"}}, "logit_bias.5", "invalid_type"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        (
            {"stream": True, "stream_options": {"include_usage": True, "foo": 1}},
            "stream_options.foo",
            "unknown_parameter",
        ),
        (
            {"stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
            "invalid_type",
        ),
        ({"stream": True, "prompt_logprobs": 1}, "prompt_logprobs", "unsupported_value"),
        ({"suffix": "s"}, "suffix", "unsupported_parameter"),
        ({"best_of": 3}, "best_of", "invalid_value"),
        ({"echo": True, "logprobs": 1}, "echo", "unsupported_value"),
        ({"logprobs": -1}, "logprobs", "invalid_value"),
        ({"prompt": None}, "prompt", "invalid_value"),
        ({"prompt": ["a", [1]]}, "prompt[1]", "invalid_value"),
    ],
)
def test_completion_refusals_name_the_param(fields, param, code):
    err = refusal(completion, **fields)
    assert (err.param, err.code) == (param, code), err.message


def test_missing_and_non_object_bodies():
    err = refusal(validate_request, cls=CompletionRequest, body={})
    assert (err.param, err.code) == ("prompt", "missing_required_parameter")
    err = refusal(validate_request, cls=ChatCompletionRequest, body=[MSG])
    assert err.param is None and "JSON object" in err.message


def test_honoured_fields_keep_their_values():
    req = chat(
        logit_bias={"5": 3, "7": -100},
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        max_completion_tokens=7,
        stop_token_ids=[1, 2],
        top_k=4,
        priority=-2,
    )
    assert req.logit_bias_ids == {5: 3.0, 7: -100.0}
    assert req.stream_options.continuous_usage_stats and req.output_limit == 7
    assert (req.stop_token_ids, req.top_k, req.priority) == ([1, 2], 4, -2)
    assert chat(max_tokens=5).output_limit == 5 and chat().logit_bias_ids is None
    assert completion(prompt=[[1, 2], [3]]).prompt == [[1, 2], [3]]


def test_parse_body_json_rules():
    assert parse_body(b'{"max_tokens": 3.0, "t": 0.5}') == {"max_tokens": 3, "t": 0.5}
    assert completion(**parse_body(b'{"max_tokens": 4.0, "temperature": 1.0}')).max_tokens == 4
    for raw, what in [
        (b'{"temperature": NaN}', "not valid JSON"),
        (b'{"temperature": Infinity}', "not valid JSON"),
        (b'{"a": ', "not valid JSON"),
        (b"\xff\xfe", "UTF-8"),
    ]:
        with pytest.raises(OpenAIError, match=what) as info:
            parse_body(raw)
        assert info.value.status == 400
