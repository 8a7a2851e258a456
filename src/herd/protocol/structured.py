"""Structured-output fields of a request: OpenAI's `response_format` (`json_object`, `json_schema`)
and vLLM's `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` and its newer
`structured_outputs` object. At most one may be given; `Constraint` is the one constraint a
request carries, with the field it came from. Imports nothing else of herd."""

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from herd.protocol.base import ParamError, Strict

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for schema and function names


@dataclass(frozen=True)
class Constraint:
    """One output constraint: `kind` is json, json_object, regex, choice or grammar; `value` the
    schema (a dict or its JSON text), pattern, choices or grammar; `param` the request field it
    came from, for errors."""

    kind: str
    value: Any
    param: str


class JSONSchemaFormat(Strict):
    """`response_format.json_schema`: the schema is enforced whether or not `strict` is set."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    """`response_format`: text (no constraint), any JSON object, or a JSON schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_needed(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ParamError(
                "'json_schema' is required with type 'json_schema' and only then", "json_schema"
            )
        return self


class StructuredOutputs(Strict):
    """vLLM's `structured_outputs` object: exactly one of its fields."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [self.json_, self.regex, self.choice, self.grammar, self.json_object or None]
        if sum(v is not None for v in given) != 1:
            raise ParamError(
                "'structured_outputs' must hold exactly one of json, regex, choice, grammar, "
                "json_object",
                "structured_outputs",
            )
        return self


class StructuredFields(Strict):
    """vLLM's structured-output extensions, on both endpoints."""

    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(None, min_length=1)
    guided_grammar: str | None = None
    structured_outputs: StructuredOutputs | None = None

    def constraints(self) -> list[Constraint]:
        """Every constraint the request gives (a valid request gives at most one)."""
        found = []
        for kind in ("json", "regex", "choice", "grammar"):
            value = getattr(self, f"guided_{kind}")
            if value is not None:
                found.append(Constraint(kind, value, f"guided_{kind}"))
        so = self.structured_outputs
        if so is not None:
            for kind, value in (("json", so.json_), ("regex", so.regex), ("choice", so.choice)):
                if value is not None:
                    found.append(Constraint(kind, value, f"structured_outputs.{kind}"))
            if so.grammar is not None:
                found.append(Constraint("grammar", so.grammar, "structured_outputs.grammar"))
            if so.json_object:
                found.append(Constraint("json_object", True, "structured_outputs.json_object"))
        fmt: ResponseFormat | None = getattr(self, "response_format", None)
        if fmt is not None and fmt.type == "json_object":
            found.append(Constraint("json_object", True, "response_format"))
        elif fmt is not None and fmt.type == "json_schema":
            schema = fmt.json_schema.schema_
            value = {} if schema is None else schema  # no schema: any JSON value
            found.append(Constraint("json", value, "response_format.json_schema.schema"))
        return found

    @model_validator(mode="after")
    def _one_constraint(self):
        found = self.constraints()
        if len(found) > 1:
            raise ParamError(
                f"'{found[1].param}' cannot be combined with '{found[0].param}': "
                "give one output constraint",
                found[1].param.split(".")[0],
            )
        return self

    @property
    def constraint(self) -> Constraint | None:
        found = self.constraints()
        return found[0] if found else None
