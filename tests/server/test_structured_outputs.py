"""Structured outputs through a real replica on the random-weight demo model, driven by the
`openai` client: json_object answers parse, json_schema / guided_json answers validate against
their schema (the `jsonschema` package), guided_choice answers are one of the choices,
guided_regex answers match, streamed or not; bad constraints are 400s naming the field."""

import json
import re

import jsonschema
import openai
import pytest

from herd.server.launch import ReplicaProcess

ENGINE_ARGS = ("--dtype", "float32", "--device", "cpu", "--max-num-seqs", "32")
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "maxLength": 6},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "address", "active"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def replica(tiny_model_dir):
    with ReplicaProcess(tiny_model_dir, *ENGINE_ARGS, "--served-model-name", "tiny") as r:
        yield r


@pytest.fixture(scope="module")
def client(replica):
    return openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)


def quote_bias(client) -> dict[str, float]:
    """A bias towards '"' so the random model closes its strings (a JSON object then ends well
    within max_tokens); the grammar, not the bias, is what keeps the answer valid JSON."""
    resp = client.completions.create(
        model="tiny", prompt='"', max_tokens=1, extra_body={"return_token_ids": True}
    )
    return {str(resp.model_extra["prompt_token_ids"][-1]): 6.0}


def test_json_object_answers_parse(client):
    bias = quote_bias(client)
    for seed in range(3):
        resp = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            response_format={"type": "json_object"},
            max_tokens=300,
            seed=seed,
            n=3,
            logit_bias=bias,
        )
        for choice in resp.choices:
            assert choice.finish_reason == "stop", choice.message.content
            assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_validate(client, stream):
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    texts, bias = [], quote_bias(client)
    for seed in range(2):
        kw = dict(model="tiny", messages=MESSAGES, response_format=fmt, max_tokens=300, seed=seed)
        kw["logit_bias"] = bias
        if stream:
            parts: dict[int, list[str]] = {}
            finish = {}
            for chunk in client.chat.completions.create(stream=True, n=2, **kw):
                for c in chunk.choices:
                    parts.setdefault(c.index, []).append(c.delta.content or "")
                    finish[c.index] = c.finish_reason or finish.get(c.index)
            assert set(finish.values()) == {"stop"}
            texts += ["".join(p) for p in parts.values()]
        else:
            resp = client.chat.completions.create(n=2, **kw)
            assert {c.finish_reason for c in resp.choices} == {"stop"}
            texts += [c.message.content for c in resp.choices]
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)


def test_guided_json_on_completions_and_structured_outputs_object(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    schema["additionalProperties"] = False
    resp = client.completions.create(
        model="tiny", prompt="JSON:", max_tokens=50, seed=1, n=2, extra_body={"guided_json": schema}
    )
    for choice in resp.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.text), schema)
    resp = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=50,
        extra_body={"structured_outputs": {"json": schema}},
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content), schema)


def test_guided_choice_answers_are_choices(client):
    choices = ["yes", "no", "maybe later", 'say "hi"']
    seen = set()
    for seed in range(4):
        resp = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=20,
            seed=seed,
            n=4,
            extra_body={"guided_choice": choices},
        )
        for choice in resp.choices:
            assert choice.message.content in choices and choice.finish_reason == "stop"
            seen.add(choice.message.content)
    assert len(seen) > 1  # sampled, not stuck on one


@pytest.mark.parametrize("pattern", [r"[a-z]{3}-[0-9]{2,4}", r"(red|green|blue) [A-Z][a-z]{1,6}!"])
def test_guided_regex_answers_match(client, pattern):
    for key in ("guided_regex", "structured_outputs"):
        value = pattern if key == "guided_regex" else {"regex": pattern}
        resp = client.completions.create(
            model="tiny", prompt="x", max_tokens=40, seed=7, n=3, extra_body={key: value}
        )
        for choice in resp.choices:
            assert choice.finish_reason == "stop"
            assert re.fullmatch(pattern, choice.text), choice.text


def test_guided_grammar_gbnf(client):
    grammar = 'root ::= "(" digit ("+" digit)* ")"\ndigit ::= [0-9]'
    resp = client.completions.create(
        model="tiny", prompt="sum:", max_tokens=40, seed=3, extra_body={"guided_grammar": grammar}
    )
    assert re.fullmatch(r"\([0-9](\+[0-9])*\)", resp.choices[0].text)


@pytest.mark.parametrize(
    "extra, param, words",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "foo"}},
                }
            },
            "response_format.json_schema.schema",
            "foo",
        ),
        (
            {"guided_json": {"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}}},
            "guided_json",
            "nowhere",
        ),
        ({"guided_regex": "(("}, "guided_regex", "unclosed group"),
        ({"guided_grammar": "root ::= missing"}, "guided_grammar", "missing"),
        ({"guided_json": "{not json"}, "guided_json", "json"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "cannot be combined"),
        ({"response_format": {"type": "json_object"}, "min_tokens": 2}, "min_tokens", "min_tokens"),
    ],
)
def test_bad_constraints_are_400_naming_the_part(client, extra, param, words):
    body = {k: v for k, v in extra.items() if k != "response_format"}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=5,
            response_format=extra.get("response_format", openai.NOT_GIVEN),
            extra_body=body,
        )
    err = info.value.body
    assert err["param"] == param
    assert words.lower() in err["message"].lower()
