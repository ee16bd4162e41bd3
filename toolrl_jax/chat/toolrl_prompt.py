"""ToolRL's prompt format (Qian et al., "ToolRL: Reward is All Tool Learning Needs", 2025).

System prompt (the `instruction` field of ToolRL's `rlla_sft.json`, the system message of its
RL parquet files and of its API-Bank files):

    You are a helpful multi-turn dialogue assistant ... structured chat responses.

    **Available Tools**
    In your response, you can use the following tools:
    1. Name: {name}
    Description: {description}
    Parameters: {json.dumps(parameters)}
    2. Name: ...

    **Steps for Each Turn**
    ... (fixed text: steps, output format, important notes; no trailing newline)

`parameters` is the JSON-schema `properties` object of the function (ToolRL's BFCL handler
passes `function["parameters"].get("properties", {})`), printed with `json.dumps` defaults
(ASCII escapes, `", "` / `": "` separators). API-Bank's processed files print it with Python's
`str(dict)` instead: `parameters_format="python"`.

User message (the `input` field): `**Dialogue Records History**\\n` followed by the turns:
`<user> {text} </user>`, the assistant's raw turns (`<think> ... </think>\\n<tool_call>...`),
and tool feedback `<obs> {json list of {"name", "results"}} </obs>`; an `<obs>` block follows
its assistant turn after one newline, every other turn is separated by a blank line.

All 400 records of `rlla_sft.json` round-trip byte-exactly through
`parse_* -> build_*` (tests/chat/test_toolrl_prompt.py).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from toolrl_jax.errors import DataError

__all__ = [
    "TOOLRL_SYSTEM_FOOTER",
    "TOOLRL_SYSTEM_HEADER",
    "TOOLRL_USER_HEADER",
    "build_toolrl_system_prompt",
    "build_toolrl_user_message",
    "format_toolrl_tool",
    "parse_toolrl_system_prompt",
    "parse_toolrl_user_message",
    "render_toolrl_observation",
    "toolrl_observation_payload",
    "toolrl_tool_from_function",
]

TOOLRL_SYSTEM_HEADER = (
    "You are a helpful multi-turn dialogue assistant capable of leveraging tool calls to solve "
    "user tasks and provide structured chat responses.\n\n"
    "**Available Tools**\n"
    "In your response, you can use the following tools:\n"
)

TOOLRL_SYSTEM_FOOTER = (
    "\n\n**Steps for Each Turn**\n"
    "1. **Think:** Recall relevant context and analyze the current user goal.\n"
    "2. **Decide on Tool Usage:** If a tool is needed, specify the tool and its parameters.\n"
    "3. **Respond Appropriately:** If a response is needed, generate one while maintaining "
    "consistency across user queries.\n\n"
    "**Output Format**\n"
    "```plaintext\n"
    "<think> Your thoughts and reasoning </think>\n"
    "<tool_call>\n"
    '{"name": "Tool name", "parameters": {"Parameter name": "Parameter content", '
    '"... ...": "... ..."}}\n'
    '{"name": "... ...", "parameters": {"... ...": "... ...", "... ...": "... ..."}}\n'
    "...\n"
    "</tool_call>\n"
    "<response> AI's final response </response>\n"
    "```\n\n"
    "**Important Notes**\n"
    "1. You must always include the `<think>` field to outline your reasoning. Provide at least "
    "one of `<tool_call>` or `<response>`. Decide whether to use `<tool_call>` (possibly "
    "multiple times), `<response>`, or both.\n"
    "2. You can invoke multiple tool calls simultaneously in the `<tool_call>` fields. Each tool "
    'call should be a JSON object with a "name" field and an "parameters" field containing a '
    'dictionary of parameters. If no parameters are needed, leave the "parameters" field an '
    "empty dictionary.\n"
    "3. Refer to the previous dialogue records in the history, including the user's queries, "
    "previous `<tool_call>`, `<response>`, and any tool feedback noted as `<obs>` (if exists)."
)

TOOLRL_USER_HEADER = "**Dialogue Records History**\n"

ParametersFormat = Literal["json", "python"]


# --------------------------------------------------------------------------------------------
# System prompt
# --------------------------------------------------------------------------------------------


def toolrl_tool_from_function(function: Mapping[str, Any]) -> dict[str, Any]:
    """ToolRL tool dict from a JSON-schema function (optionally wrapped as `{"function": ...}`).

    `{"name", "description", "parameters": {"type": "object", "properties": P}}` ->
    `{"name", "description", "parameters": P}`, as ToolRL's BFCL handler converts tools.
    """
    if isinstance(function.get("function"), Mapping):
        function = function["function"]
    params = function.get("parameters") or {}
    if isinstance(params, Mapping) and "properties" in params:
        params = params.get("properties") or {}
    elif isinstance(params, Mapping) and params.get("type") == "object":
        params = {}
    return {
        "name": function.get("name", ""),
        "description": function.get("description", ""),
        "parameters": params,
    }


def _format_parameters(parameters: Any, parameters_format: ParametersFormat) -> str:
    if isinstance(parameters, str):  # already printed (e.g. unparseable text from a data file)
        return parameters
    if parameters_format == "python":
        return str(parameters)
    return json.dumps(parameters)


def format_toolrl_tool(
    index: int, tool: Mapping[str, Any], parameters_format: ParametersFormat = "json"
) -> str:
    """`{index}. Name: {name}\\nDescription: {description}\\nParameters: {parameters}`."""
    return (
        f"{index}. Name: {tool['name']}\n"
        f"Description: {tool.get('description', '')}\n"
        f"Parameters: {_format_parameters(tool.get('parameters', {}), parameters_format)}"
    )


def build_toolrl_system_prompt(
    tools: Sequence[Mapping[str, Any]], *, parameters_format: ParametersFormat = "json"
) -> str:
    """ToolRL's system prompt for `tools` (dicts with name, description, parameters).

    `parameters` is the properties dict (see `toolrl_tool_from_function` for JSON-schema
    functions), printed with `json.dumps` (or `str` for `parameters_format="python"`,
    API-Bank's style); a string is inserted verbatim. Tools are numbered from 1.
    """
    lines = [format_toolrl_tool(i + 1, t, parameters_format) for i, t in enumerate(tools)]
    return TOOLRL_SYSTEM_HEADER + "\n".join(lines) + TOOLRL_SYSTEM_FOOTER


def _parse_parameters(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_toolrl_system_prompt(text: str) -> list[dict[str, Any]]:
    """Tools listed in a ToolRL system prompt, as `{"name", "description", "parameters"}`.

    `parameters` is parsed as JSON, else as a Python literal (API-Bank), else kept as the raw
    string, so `build_toolrl_system_prompt(parse_toolrl_system_prompt(t))` reproduces `t`
    (with the matching `parameters_format`).

    Raises:
      DataError: `text` does not have the ToolRL header, footer or numbered tool entries.
    """
    if not text.startswith(TOOLRL_SYSTEM_HEADER):
        raise DataError("not a ToolRL system prompt: the '**Available Tools**' header is missing")
    end = text.rfind(TOOLRL_SYSTEM_FOOTER[:26], len(TOOLRL_SYSTEM_HEADER) - 1)
    if end < 0:
        raise DataError("not a ToolRL system prompt: '**Steps for Each Turn**' is missing")
    section = text[len(TOOLRL_SYSTEM_HEADER): end]
    tools: list[dict[str, Any]] = []
    if not section:
        return tools
    # Entries are "k. Name: ..." at the start of a line, numbered 1, 2, 3, ... in order.
    starts = []
    index, pos = 1, 0
    while True:
        marker = f"{index}. Name: "
        found = section.find(marker, pos) if index == 1 else section.find("\n" + marker, pos)
        if found < 0 or (index == 1 and found != 0):
            break
        starts.append((found if index == 1 else found + 1, len(marker)))
        pos = found + 1
        index += 1
    if not starts:
        raise DataError("ToolRL system prompt lists no tools in the '1. Name: ...' format")
    for k, (start, marker_len) in enumerate(starts):
        stop = starts[k + 1][0] - 1 if k + 1 < len(starts) else len(section)
        entry = section[start + marker_len: stop]
        name, sep1, rest = entry.partition("\nDescription: ")
        description, sep2, params = rest.rpartition("\nParameters: ")
        if not sep1 or not sep2:
            raise DataError(f"ToolRL tool entry {k + 1} lacks 'Description:' or 'Parameters:'")
        tools.append(
            {"name": name, "description": description, "parameters": _parse_parameters(params)}
        )
    return tools


# --------------------------------------------------------------------------------------------
# User message (dialogue history) and observations
# --------------------------------------------------------------------------------------------


def toolrl_observation_payload(results: Sequence[tuple[str, Any]]) -> str:
    """The JSON ToolRL puts inside `<obs>`: `[{"name": tool, "results": result}, ...]`."""
    return json.dumps([{"name": name, "results": result} for name, result in results])


def render_toolrl_observation(results: Sequence[str]) -> str:
    """`<obs> {results joined by newlines} </obs>`; pass one `toolrl_observation_payload`
    string to reproduce ToolRL's data exactly."""
    return "<obs> " + "\n".join(results) + " </obs>"


_USER_OPEN, _USER_CLOSE = "<user> ", " </user>"
_OBS_OPEN, _OBS_CLOSE = "<obs> ", " </obs>"


def build_toolrl_user_message(history: Sequence[Mapping[str, str]]) -> str:
    """ToolRL's user message from the dialogue so far.

    `history` items are `{"role": "user" | "assistant" | "obs", "content": str}` ("tool" is an
    alias of "obs"): user -> `<user> {content} </user>`, assistant -> its raw text,
    obs -> `<obs> {content} </obs>`. Turns are joined by a blank line, except that an `<obs>`
    follows its assistant turn after a single newline.
    """
    out = TOOLRL_USER_HEADER
    for k, turn in enumerate(history):
        role, content = turn.get("role"), turn.get("content", "")
        if role == "user":
            text = _USER_OPEN + content + _USER_CLOSE
        elif role in ("obs", "tool"):
            text = _OBS_OPEN + content + _OBS_CLOSE
        elif role == "assistant":
            text = content
        else:
            raise DataError(f"ToolRL history turn {k} has role {role!r}; use user/assistant/obs")
        if k > 0:
            out += "\n" if role in ("obs", "tool") else "\n\n"
        out += text
    return out


def parse_toolrl_user_message(text: str) -> list[dict[str, str]]:
    """Inverse of `build_toolrl_user_message`: the turns of a ToolRL `input` field.

    Raises:
      DataError: the `**Dialogue Records History**` header is missing or a tag is unclosed.
    """
    if not text.startswith(TOOLRL_USER_HEADER):
        raise DataError("not a ToolRL user message: '**Dialogue Records History**' is missing")
    pos, turns = len(TOOLRL_USER_HEADER), []
    while pos < len(text):
        if text.startswith(_USER_OPEN, pos):
            end = text.find(_USER_CLOSE, pos)
            if end < 0:
                raise DataError("ToolRL user message: '<user>' without ' </user>'")
            turns.append({"role": "user", "content": text[pos + len(_USER_OPEN): end]})
            pos = end + len(_USER_CLOSE)
        elif text.startswith(_OBS_OPEN, pos):
            end = text.find(_OBS_CLOSE, pos)
            if end < 0:
                raise DataError("ToolRL user message: '<obs>' without ' </obs>'")
            turns.append({"role": "obs", "content": text[pos + len(_OBS_OPEN): end]})
            pos = end + len(_OBS_CLOSE)
        else:
            ends = [text.find("\n" + _OBS_OPEN, pos), text.find("\n\n" + _USER_OPEN, pos)]
            ends = [i for i in ends if i >= 0]
            end = min(ends) if ends else len(text)
            turns.append({"role": "assistant", "content": text[pos:end]})
            pos = end
        if text.startswith("\n\n", pos):
            pos += 2
        elif text.startswith("\n", pos):
            pos += 1
    return turns
