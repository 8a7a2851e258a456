"""Tool-call parsers: a model's output text read as tool calls, one parser per output format,
chosen by name (`--tool-call-parser`). Each parser says whether a text may still turn into a call
(so a stream holds it back) and parses a finished text into content and calls."""

import json
from dataclasses import dataclass

PYTHON_TAG = "<|python_tag|>"  # Llama 3.x: what precedes a call when the template asks for it


@dataclass
class ParsedCall:
    """One call: the function's name and its arguments as JSON text."""

    name: str
    arguments: str


class ToolParser:
    """A format of tool calls in output text. `may_start_call(text)`: could a text that begins
    like this be a call (a stream holds such text back until the end)? `parse(text, names)`:
    (content, calls), where calls is empty (and content the text) unless the whole text is calls
    of known functions."""

    name = ""

    def may_start_call(self, text: str) -> bool:
        raise NotImplementedError

    def parse(self, text: str, names: set[str]) -> tuple[str | None, list[ParsedCall]]:
        raise NotImplementedError


class Llama3JsonParser(ToolParser):
    """Llama 3.x's JSON tool calls: an optional `<|python_tag|>`, then
    `{"name": ..., "parameters": {...}}` (or `"arguments"`), several separated by `;` (a JSON
    array of them is read too), as vLLM's `llama3_json` parser reads them."""

    name = "llama3_json"

    def may_start_call(self, text: str) -> bool:
        t = text.lstrip()
        return not t or t[0] in "{[" or t.startswith(PYTHON_TAG) or PYTHON_TAG.startswith(t)

    def parse(self, text: str, names: set[str]) -> tuple[str | None, list[ParsedCall]]:
        body = text.strip().removeprefix(PYTHON_TAG).strip()
        items = _json_values(body)
        calls = []
        for item in items or []:
            if not isinstance(item, dict):
                return text, []
            name = item.get("name")
            args = item.get("parameters", item.get("arguments"))
            if isinstance(args, str):  # some models send the arguments as JSON text
                try:
                    args = json.loads(args)
                except ValueError:
                    return text, []
            if name not in names or not isinstance(args, dict):
                return text, []
            calls.append(ParsedCall(name, json.dumps(args, ensure_ascii=False)))
        return (None, calls) if calls else (text, [])


def _json_values(body: str) -> list | None:
    """JSON values separated by ';' or ',' (an array's items are spread); None if not all JSON."""
    decoder, pos, out = json.JSONDecoder(), 0, []
    while pos < len(body):
        while pos < len(body) and body[pos] in " \t\r\n;,":
            pos += 1
        if pos == len(body):
            break
        try:
            value, pos = decoder.raw_decode(body, pos)
        except ValueError:
            return None
        out.extend(value if isinstance(value, list) else [value])
    return out


PARSERS: dict[str, type[ToolParser]] = {Llama3JsonParser.name: Llama3JsonParser}


def get_parser(name: str) -> ToolParser:
    """The registered parser `name` (ValueError naming the known ones otherwise)."""
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r} (known: {', '.join(sorted(PARSERS))})")
    return PARSERS[name]()
