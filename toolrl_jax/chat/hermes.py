"""The Qwen / Hermes tool format (what Qwen2.5 and Qwen3 chat templates render for `tools=`).

- `render_tools_system(tools, system=None)`: system-message text listing the tools as JSON
  lines inside `<tools></tools>`, exactly as Qwen3's template renders it (Qwen2.5 too, given its
  default system text as `system`). Render it with `ChatMLTemplate.message_text("system", ...)`.
- `format_tool_call(name, arguments)`:
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.
- `render_tool_responses(results)`: the user-turn content Qwen's template builds from
  consecutive `tool` messages: `<tool_response>\\n{r}\\n</tool_response>` blocks joined by `\\n`.
- `parse_tool_calls(text)`: defensive parser of `<tool_call>` blocks in model output.

JSON is written like transformers' Jinja `tojson`: `json.dumps(x, ensure_ascii=False)`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from toolrl_jax.toolcalls.parse import tool_call_blocks

__all__ = [
    "format_tool_call",
    "parse_tool_calls",
    "render_tool_responses",
    "render_tools_system",
    "tool_call_name_and_arguments",
]

_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_tools_system(tools: Sequence[Mapping[str, Any]], system: str | None = None) -> str:
    """System-message content announcing `tools` (JSON-schema function dicts) in Qwen's format.

    `(system + "\\n\\n" if system) + "# Tools ... <tools>" + "\\n" + json(tool) per tool +
    "\\n</tools> ... </tool_call>"`. Each tool is dumped as given (usually
    `{"type": "function", "function": {"name", "description", "parameters"}}`).
    """
    head = f"{system}\n\n" if system else ""
    body = "".join("\n" + _tojson(dict(tool)) for tool in tools)
    return head + _TOOLS_HEADER + body + _TOOLS_FOOTER


def format_tool_call(name: str, arguments: Mapping[str, Any] | str) -> str:
    """`<tool_call>\\n{"name": "<name>", "arguments": <json>}\\n</tool_call>`.

    A string `arguments` is inserted verbatim (Qwen3's template does the same).
    """
    args = arguments if isinstance(arguments, str) else _tojson(dict(arguments))
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def tool_call_name_and_arguments(call: Mapping[str, Any]) -> tuple[str, Any]:
    """(name, arguments) of an OpenAI-style `{"function": {...}}` or a flat `{"name", ...}` call."""
    if isinstance(call.get("function"), Mapping):
        call = call["function"]
    arguments = call.get("arguments", call.get("parameters", {}))
    return str(call.get("name", "")), arguments if arguments is not None else {}


def render_tool_responses(results: Sequence[str]) -> str:
    """Content of the user turn holding tool results: `<tool_response>` blocks joined by `\\n`."""
    return "\n".join(f"<tool_response>\n{r}\n</tool_response>" for r in results)


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Tool calls in model output, as `{"name": str, "arguments": dict}`; never raises.

    Each `<tool_call>...</tool_call>` block must hold one JSON object with a string `name` and
    an object `arguments` (or `parameters`); blocks that do not are skipped, and so is an
    unclosed `<tool_call>` at the end. Linear in the text (`toolcalls.parse.tool_call_blocks`).
    """
    calls: list[dict[str, Any]] = []
    if not isinstance(text, str):
        return calls
    for block in tool_call_blocks(text)[0]:
        try:
            obj = json.loads(block.strip())
        except (ValueError, RecursionError):
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):
                continue
        if not isinstance(args, dict):
            continue
        calls.append({"name": obj["name"], "arguments": args})
    return calls
