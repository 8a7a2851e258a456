"""The prompt grammar: every accepted form, and refusals that name the offending element."""

import pytest

from herd.protocol.prompts import PromptError, content_text, parse_prompts, prompt_key


@pytest.mark.parametrize(
    "value, prompts",
    [
        ("hi", ["hi"]),
        ("", [""]),  # empty text is text; the engine judges whether it tokenizes to anything
        ([0, 5, 7], [[0, 5, 7]]),
        (["a", "b"], ["a", "b"]),
        ([[1], [2, 3]], [[1], [2, 3]]),
        (["only"], ["only"]),
    ],
)
def test_accepted_prompt_forms(value, prompts):
    assert parse_prompts(value) == prompts


@pytest.mark.parametrize(
    "value, param",
    [
        (None, "prompt"),
        (3, "prompt"),
        ([], "prompt"),
        ([-1], "prompt"),
        ([1, -1], "prompt"),
        ([1, True], "prompt"),  # a boolean is not a token id
        ([True], "prompt"),
        ([1.5], "prompt"),
        (["a", 7], "prompt[1]"),
        (["a", [1]], "prompt[1]"),  # a batch is texts or token-id arrays, not both
        ([[1], "a"], "prompt[1]"),
        ([[1], []], "prompt[1]"),
        ([[1], [2, -3]], "prompt[1]"),
        ([{"text": "a"}], "prompt"),
    ],
)
def test_refused_prompts_name_the_element(value, param):
    with pytest.raises(PromptError) as info:
        parse_prompts(value)
    assert info.value.param == param
    assert param in info.value.message


def test_batch_limit():
    assert len(parse_prompts(["a"] * 4, max_batch=4)) == 4
    with pytest.raises(PromptError, match="at most 3"):
        parse_prompts(["a"] * 4, max_batch=3)
    assert parse_prompts([1, 2, 3, 4], max_batch=2) == [[1, 2, 3, 4]]  # one prompt, not a batch


def test_prompt_key():
    assert prompt_key("abc") == "abc"
    assert prompt_key([1, 22, 3]) == "1 22 3"


def test_content_forms():
    assert content_text("hello", "content") == "hello"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert content_text(parts, "content") == "ab"
    assert content_text([], "content") == ""
    cached = [{"type": "text", "text": "x", "prompt_cache_breakpoint": {"mode": "explicit"}}]
    assert content_text(cached, "content") == "x"


@pytest.mark.parametrize(
    "content, param",
    [
        (3, "content"),
        (None, "content"),
        ({"type": "text", "text": "a"}, "content"),
        ([{"type": "image_url", "image_url": {"url": "x"}}], "content[0]"),
        ([{"type": "text", "text": "a"}, {"type": "input_audio"}], "content[1]"),
        (["a"], "content[0]"),
        ([{"type": "text"}], "content[0].text"),
        ([{"type": "text", "text": 5}], "content[0].text"),
        ([{"type": "text", "text": "a", "extra": 1}], "content[0].extra"),
    ],
)
def test_refused_content_names_the_part(content, param):
    with pytest.raises(PromptError) as info:
        content_text(content, "content")
    assert info.value.param == param
