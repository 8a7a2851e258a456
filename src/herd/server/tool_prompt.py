"""A chat with tools rendered into prompt tokens: through the model's own chat template when it
takes `tools` (Llama 3.x's do), else through herd's fallback, which states the tools and the call
format in the system message and writes earlier calls as the assistant's text."""

import json
from typing import Any

from herd.server.errors import bad_request

FALLBACK_PROMPT = (
    "You can call these functions:\n{tools}\n\n"
    "To call a function, answer with only a JSON object "
    '{{"name": <function name>, "parameters": <object of arguments>}}; for several calls, '
    'separate the objects with "; ". Otherwise answer normally.'
)


def template_takes_tools(template: str | None) -> bool:
    """True when the chat template reads `tools` (so it renders them itself)."""
    return bool(template) and "tools" in template


def fallback_messages(messages: list[dict[str, Any]], tools: list[dict] | None) -> list[dict]:
    """The conversation for a template that cannot take tools: the tools described in the system
    message (one is added first if there is none), assistant tool calls written as the JSON the
    model is asked to produce, tool results as `tool` messages with their text."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        if calls:
            text = "; ".join(
                json.dumps(
                    {"name": c["function"]["name"], "parameters": c["function"]["arguments"]}
                )
                for c in calls
            )
            m["content"] = f"{m['content']}\n{text}" if m.get("content") else text
        m.pop("tool_call_id", None)
        out.append(m)
    if tools:
        described = FALLBACK_PROMPT.format(
            tools="\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        )
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = dict(out[0], content=f"{out[0]['content']}\n\n{described}")
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


def render_chat(tokenizer: Any, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """Prompt token ids of a chat (with its tools, if any); a template failure is a 400."""
    template = getattr(getattr(tokenizer, "hf", None), "chat_template", None)
    history_has_tools = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    kwargs: dict[str, Any] = {}
    if template_takes_tools(template):
        if tools:
            kwargs["tools"] = tools
    elif tools or history_has_tools:
        messages = fallback_messages(messages, tools)
    try:
        return list(tokenizer.apply_chat_template(messages, **kwargs))
    except Exception as exc:  # a template that rejects these messages is the caller's 400
        raise bad_request(f"chat template failed: {exc}", "messages") from None
