"""Request parsing: every accepted field lands in SamplingParams; everything else is a 400."""

import pytest

from herd.protocol.errors import OpenAIError as APIError
from herd.server.protocol import parse_chat, parse_completion


def _err(fn, body) -> APIError:
    with pytest.raises(APIError) as info:
        fn(body)
    assert info.value.status == 400
    return info.value


def test_completion_fields_reach_sampling_params():
    req = parse_completion(
        {
            "model": "m",
            "prompt": "hi",
            "max_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "n": 2,
            "stop": "x",
            "seed": 3,
            "logprobs": 2,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "top_k": 5,
            "min_p": 0.1,
            "ignore_eos": True,
            "min_tokens": 2,
            "priority": -1,
            "return_token_ids": True,
            "user": "u1",
        }
    )
    p = req.params
    assert (p.max_tokens, p.temperature, p.top_p, p.n, p.stop_list, p.seed) == (
        7,
        0.5,
        0.9,
        2,
        ["x"],
        3,
    )
    assert (p.logprobs, p.presence_penalty, p.frequency_penalty, p.top_k, p.min_p) == (
        2,
        0.5,
        -0.5,
        5,
        0.1,
    )
    assert p.ignore_eos and p.min_tokens == 2
    assert req.priority == -1 and req.return_token_ids and req.user == "u1"
    assert not req.max_tokens_default


def test_completion_defaults_and_prompt_forms():
    req = parse_completion({"prompt": [5, 6, 7]})
    assert req.prompt == [5, 6, 7] and req.params.max_tokens == 16 and req.max_tokens_default
    assert parse_completion({"prompt": ["one"]}).prompt == "one"
    assert parse_completion({"prompt": [[1, 2]]}).prompt == [1, 2]


def test_chat_fields():
    req = parse_chat(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "max_completion_tokens": 5,
            "logprobs": True,
            "top_logprobs": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert req.messages == [{"role": "user", "content": "ab"}]
    assert req.params.max_tokens == 5 and req.params.logprobs == 3
    assert req.stream and req.include_usage
    assert parse_chat({"messages": [{"role": "user", "content": "x"}]}).params.max_tokens is None
    assert (
        parse_chat(
            {"messages": [{"role": "user", "content": "x"}], "logprobs": True}
        ).params.logprobs
        == 0
    )


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "3"}, "max_tokens"),
        ({"prompt": "x", "temperature": True}, "temperature"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "n": 100000}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "stop": [1]}, "stop"),
        ({"prompt": "x", "logit_bias": {"x": 5}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"1": 101}}, "logit_bias"),
        ({"prompt": "x", "prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt": ["a", "b", "c"], "n": 2}, None),
        ({"prompt": "x", "suffix": "s"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "logprobs": 99}, "logprobs"),
        ({"prompt": "x", "min_tokens": 20, "max_tokens": 3}, "min_tokens"),
        ({"prompt": ["a", 7]}, "prompt[1]"),
        ({"prompt": ["a", []]}, "prompt[1]"),
        ({"prompt": ["a"] * 65}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({}, "prompt"),
    ],
)
def test_completion_refusals(body, param):
    if param is None:  # a limit of this replica, not of the protocol: max_n = 4 here
        assert parse_completion(body, max_n=4).params.n == 2
        assert _err(lambda b: parse_completion(b, max_n=2), body).param == "prompt"
        return
    assert _err(parse_completion, body).param == param


def test_completion_prompt_forms():
    assert parse_completion({"prompt": "x"}).prompts == ["x"]
    assert parse_completion({"prompt": [1, 2]}).prompts == [[1, 2]]
    assert parse_completion({"prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert parse_completion({"prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [{}]}]},
            "messages[0].tool_calls[0].id",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools[0].function",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "xml"},
            },
            "response_format.type",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 2,
                "max_completion_tokens": 3,
            },
            "max_completion_tokens",
        ),
    ],
)
def test_chat_refusals(body, param):
    assert _err(parse_chat, body).param == param


def test_non_object_body():
    assert _err(parse_completion, [1, 2]).param is None


def test_extensions_reach_the_engine():
    req = parse_chat(
        {
            "messages": [{"role": "user", "content": "x"}],
            "logit_bias": {"5": 2, "9": -100},
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "safety_identifier": "s1",
            "repetition_penalty": 1.2,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
            "stop_token_ids": [3],
        }
    )
    p = req.params
    assert p.logit_bias == {5: 2.0, 9: -100.0}
    assert (p.repetition_penalty, p.skip_special_tokens, p.include_stop_str_in_output) == (
        1.2,
        False,
        True,
    )
    assert p.stop_token_ids == [3] and req.user == "s1"
    assert req.include_usage and req.continuous_usage
    # continuous_usage_stats alone does nothing, as in vLLM
    alone = parse_completion(
        {"prompt": "x", "stream": True, "stream_options": {"continuous_usage_stats": True}}
    )
    assert not alone.include_usage and not alone.continuous_usage
    assert parse_completion({"prompt": "x", "prompt_logprobs": 3}).params.prompt_logprobs == 3


def test_the_replicas_max_tokens_default_applies_only_when_none_is_given():
    chat = {"messages": [{"role": "user", "content": "x"}]}
    assert parse_chat(chat, max_tokens_default=7).params.max_tokens == 7
    assert parse_chat(chat, max_tokens_default=7).max_tokens_default  # still clamped to context
    assert parse_chat({**chat, "max_tokens": 3}, max_tokens_default=7).params.max_tokens == 3
    assert parse_completion({"prompt": "x"}, max_tokens_default=7).params.max_tokens == 7
    assert parse_completion({"prompt": "x"}).params.max_tokens == 16  # OpenAI's default
