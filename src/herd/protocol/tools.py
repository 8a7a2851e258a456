"""Tool-calling fields of a chat request (`tools`, `tool_choice`, `parallel_tool_calls`), the
assistant's `tool_calls` in the history, and the JSON schema that `tool_choice` "required" or a
named function constrains the output to. Imports nothing else of herd."""

import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from herd.protocol.base import ParamError, Strict, unsupported
from herd.protocol.structured import NAME_PATTERN, Constraint

ANY_OBJECT = {"type": "object"}  # a function without `parameters` takes any JSON object


class FunctionDef(Strict):
    """`tools[i].function`: the function's name, what it does, and its parameters' JSON schema."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # herd enforces the schema only under tool_choice required/named


class Tool(Strict):
    """One entry of `tools` (function tools only; OpenAI's custom tools are refused)."""

    type: Literal["function"]
    function: FunctionDef


class FunctionName(Strict):
    """The function a named `tool_choice` forces."""

    name: str


class NamedToolChoice(Strict):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"]
    function: FunctionName


class ToolCallFunction(Strict):
    """A call's function name and its arguments as JSON text (as OpenAI sends them)."""

    name: str
    arguments: str


class ToolCall(Strict):
    """One entry of an assistant message's `tool_calls`."""

    id: str
    type: Literal["function"]
    function: ToolCallFunction

    def as_template(self) -> dict[str, Any]:
        """The call as chat templates expect it: arguments as an object when they parse."""
        try:
            arguments: Any = json.loads(self.function.arguments)
        except ValueError:
            arguments = self.function.arguments
        fn = {"name": self.function.name, "arguments": arguments}
        return {"id": self.id, "type": "function", "function": fn}


class ToolFields(Strict):
    """`tools`, `tool_choice`, `parallel_tool_calls` and the deprecated `functions` /
    `function_call` (refused unless empty / none / auto)."""

    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None

    @field_validator("functions")
    @classmethod
    def _no_functions(cls, value: Any) -> Any:
        return unsupported("functions", value, (None, []))

    @field_validator("function_call")
    @classmethod
    def _no_function_call(cls, value: Any) -> Any:
        return unsupported("function_call", value, (None, "none", "auto"))

    @model_validator(mode="after")
    def _choice_names_a_tool(self):
        choice, names = self.tool_choice, [t.function.name for t in self.tools or []]
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ParamError(
                f"'tool_choice' names function {choice.function.name!r}, which is not in "
                f"'tools' ({', '.join(names) or 'none given'})",
                "tool_choice",
            )
        if choice == "required" and not names:
            raise ParamError("'tool_choice' is 'required' but no 'tools' were given", "tool_choice")
        return self

    @property
    def tool_mode(self) -> str | None:
        """None (no tools in play), "auto", "required" or "named"."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"

    def tool_constraint(self) -> Constraint | None:
        """The output constraint `tool_choice` implies: a named function's parameters, or for
        "required" an array of {"name", "parameters"} calls (one unless parallel calls are
        allowed); None when the model is free to choose."""
        mode = self.tool_mode
        if mode == "named":
            name = self.tool_choice.function.name
            i, fn = next(
                (i, t.function) for i, t in enumerate(self.tools) if t.function.name == name
            )
            return Constraint(
                "json", fn.parameters or ANY_OBJECT, f"tools[{i}].function.parameters"
            )
        if mode != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.function.name},
                    "parameters": t.function.parameters or ANY_OBJECT,
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        schema: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
        if self.parallel_tool_calls is False:
            schema["maxItems"] = 1
        return Constraint("json", schema, "tools")

    def tool_dicts(self) -> list[dict[str, Any]]:
        """`tools` as plain JSON for chat templates (the shape transformers documents)."""
        return [t.model_dump(exclude_none=True) for t in self.tools or []]
