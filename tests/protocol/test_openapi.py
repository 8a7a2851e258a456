"""The OpenAPI document: it loads (every reference resolves), its examples are valid requests,
and the gateway can reuse it with its own title and error statuses."""

import json

import schemathesis

from herd.protocol.openapi import EXAMPLES, build_openapi
from herd.protocol.requests import ChatCompletionRequest, CompletionRequest, validate_request

MODELS = {"CompletionRequest": CompletionRequest, "ChatCompletionRequest": ChatCompletionRequest}


def test_document_loads_with_every_operation():
    doc = build_openapi()
    assert doc["openapi"] == "3.1.0"
    json.dumps(doc)  # plain JSON
    schema = schemathesis.openapi.from_dict(doc)
    ops = {(r.ok().method.upper(), r.ok().path) for r in schema.get_all_operations()}
    assert {("POST", "/v1/completions"), ("POST", "/v1/chat/completions")} <= ops
    assert {("GET", p) for p in ("/v1/models", "/health", "/ready", "/metrics")} <= ops


def test_examples_are_valid_requests():
    for model_name, examples in EXAMPLES.items():
        for body in examples.values():
            validate_request(MODELS[model_name], body)


def test_generate_routes_document_errors_and_streams():
    op = build_openapi()["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "400", "404", "413", "429", "500", "503"} <= set(op["responses"])
    ok = op["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}
    data = ok["text/event-stream"]["schema"]["properties"]["data"]["anyOf"]
    assert {"const": "[DONE]"} in data


def test_narrowed_to_a_replica_and_reused_by_a_gateway():
    doc = build_openapi("herd gateway", ["a", "b"], 64, {"401": "bad key", "502": "upstream"})
    assert doc["info"]["title"] == "herd gateway"
    props = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert props["model"]["anyOf"][0] == {"enum": ["a", "b"]}
    assert props["max_completion_tokens"]["anyOf"][0]["maximum"] == 63
    assert set(doc["paths"]["/v1/completions"]["post"]["responses"]) == {"200", "401", "502"}
    generic = build_openapi()["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert "enum" not in json.dumps(generic["model"])
