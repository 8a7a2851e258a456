"""The default model (SmolLM2-135M-Instruct) behind a real replica, driven by the `openai`
client: a simple extraction prompt with a JSON schema returns the schema's fields with the values
the text states (name and city; a 135M model does not copy numbers reliably, so the age is
checked for its type only)."""

import json

import jsonschema
import openai
import pytest

from herd.model.default_model import ensure_default_model
from herd.server.launch import ReplicaProcess

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
CASES = [
    ("John Smith is 42 years old and lives in Paris.", "John Smith", "Paris"),
    ("Our customer Akira Tanaka (age 58) is based in Tokyo.", "Akira Tanaka", "Tokyo"),
]


@pytest.fixture(scope="module")
def client():
    with ReplicaProcess(ensure_default_model(), "--served-model-name", "smol") as r:
        yield openai.OpenAI(base_url=r.url + "/v1", api_key="none", max_retries=0)


@pytest.mark.parametrize("text, name, city", CASES)
def test_extraction_with_a_schema(client, text, name, city):
    prompt = f"Extract the person's name, age and city from this text as JSON.\n\nText: {text}"
    resp = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=60,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
        },
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    answer = json.loads(choice.message.content)
    jsonschema.validate(answer, SCHEMA)
    assert (answer["name"], answer["city"]) == (name, city)
