"""`GET /openapi.json`: an OpenAPI 3.1 document generated from the request and response models,
for the replica and the gateway alike (the gateway passes its own title and status codes).
Imports nothing else of herd."""

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from herd.protocol import requests, responses

REF = "#/components/schemas/{model}"
ERROR_STATUSES = {
    "400": "Invalid request: the error names the parameter",
    "404": "Unknown model",
    "413": "Request body too large",
    "429": "Queue full or rate limited; retry after Retry-After seconds",
    "500": "Internal error",
    "503": "Starting or draining; retry elsewhere",
}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(statuses: dict[str, str]) -> dict:
    return {code: _json(_ref(responses.ErrorResponse), why) for code, why in statuses.items()}


STREAM = {"stream": True, "stream_options": {"include_usage": True}}
EXAMPLES = {
    "CompletionRequest": {
        "text": {"prompt": "Say this is a test", "max_tokens": 7, "temperature": 0},
        "stream": {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 5, **STREAM},
    },
    "ChatCompletionRequest": {
        "text": {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 7},
        "stream": {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "max_completion_tokens": 5,
            "logprobs": True,
            "top_logprobs": 2,
            **STREAM,
        },
    },
}


def _generate_op(
    summary: str, body: type[BaseModel], reply: type[BaseModel], chunk: type[BaseModel], errors
) -> dict:
    # One server-sent event (OpenAPI 3.1: `schema` describes each event of the stream). Its data
    # is a chunk, or an error if the stream fails after it began; the last event is `[DONE]`.
    sse = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [_ref(chunk), _ref(responses.ErrorResponse)]},
                    },
                ]
            }
        },
        "description": f"`data: <{chunk.__name__} JSON>` events, then `data: [DONE]`",
    }
    ok = _json(_ref(reply), "The completion (`stream` false) or an event stream (`stream` true)")
    ok["content"]["text/event-stream"] = {"schema": sse}
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _ref(body),
                        "examples": {
                            name: {"value": value}
                            for name, value in EXAMPLES[body.__name__].items()
                        },
                    }
                },
            },
            "responses": {"200": ok, **errors},
        }
    }


def _get(summary: str, ok: dict, errors: dict | None = None) -> dict:
    return {"get": {"summary": summary, "responses": {"200": ok, **(errors or {})}}}


def _restrict(defs: dict, model_names: list[str] | None, max_model_len: int | None) -> None:
    """What this server accepts beyond the generic models: its model names, its context."""
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        props = defs[name]["properties"]
        if model_names:
            props["model"] = {"anyOf": [{"enum": list(model_names)}, {"type": "null"}]}
        if max_model_len:
            for field in ("max_tokens", "max_completion_tokens"):
                if field in props:
                    limit = {"type": "integer", "minimum": 1, "maximum": max_model_len - 1}
                    props[field] = {"anyOf": [limit, {"type": "null"}]}


def build_openapi(
    title: str = "herd replica",
    model_names: list[str] | None = None,
    max_model_len: int | None = None,
    error_statuses: dict[str, str] | None = None,
    version: str = "1",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the OpenAI routes plus /health, /ready, /metrics and
    /openapi.json. `error_statuses` (status -> description) replaces the default error set of
    the generate routes (a gateway adds 401 and 502, say); `model_names` and `max_model_len`,
    when known, narrow `model` to the served names and `max_tokens` to the context."""
    models = [
        (requests.CompletionRequest, "validation"),
        (requests.ChatCompletionRequest, "validation"),
        (responses.CompletionResponse, "serialization"),
        (responses.ChatCompletionResponse, "serialization"),
        (responses.ChatCompletionChunk, "serialization"),
        (responses.ModelList, "serialization"),
        (responses.ErrorResponse, "serialization"),
        (responses.Status, "serialization"),
    ]
    _, defs = models_json_schema(models, ref_template=REF)
    _restrict(defs["$defs"], model_names, max_model_len)
    errors = _errors(error_statuses or ERROR_STATUSES)
    text = {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    status = _ref(responses.Status)
    paths = {
        "/v1/completions": _generate_op(
            "Text completion (OpenAI's /v1/completions)",
            requests.CompletionRequest,
            responses.CompletionResponse,
            responses.CompletionResponse,
            errors,
        ),
        "/v1/chat/completions": _generate_op(
            "Chat completion (OpenAI's /v1/chat/completions)",
            requests.ChatCompletionRequest,
            responses.ChatCompletionResponse,
            responses.ChatCompletionChunk,
            errors,
        ),
        "/v1/models": _get("The served model", _json(_ref(responses.ModelList), "Model list")),
        "/health": _get(
            "Liveness", _json(status, "Alive"), _errors({"500": "The engine loop failed"})
        ),
        "/ready": _get(
            "Readiness: 200 only while serving",
            _json(status, "Ready"),
            {"503": _json(status, "Starting or draining")},
        ),
        "/metrics": _get("Prometheus metrics", text),
        "/openapi.json": _get("This document", _json({"type": "object"}, "OpenAPI 3.1 document")),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": defs["$defs"]},
    }
