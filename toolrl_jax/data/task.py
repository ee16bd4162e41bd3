"""The common record every loader produces: :class:`ToolTask`, plus ToolRL text helpers.

A ``ToolTask`` is one prompt with its known answer:

* ``messages``: the chat so far, ``[{"role": "system"|"user"|..., "content": str}, ...]``. For
  ToolRL-format data this is ``[system (ToolRL instruction with the tool list), user
  ("**Dialogue Records History**\\n<user> ... </user>")]``.
* ``tools``: the tools as JSON-schema function dicts
  ``{"name", "description", "parameters": {"type": "object", "properties", "required"}}``,
  one shape for every source, so a model's own tool template (hermes, Llama 3) can render
  them. For ToolRL / API-Bank records they are parsed back out of the system prompt
  (``required`` is then empty: ToolRL's prompt does not say which are required).
* ``ground_truth``: ToolRL target text, ``<think> .. </think>\\n<tool_call>\\n{json lines}\\n
  </tool_call>`` and/or ``<response> .. </response>``.
* ``ground_truth_calls``: the calls in that text, ``[{"name": str, "arguments": dict}]``.
* ``meta``: source-specific extras (benchmark category, level, BFCL possible answers, ...).

Treat the lists and dicts inside a task as read-only; loaders never share them between tasks.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections import Counter
from typing import Any, Iterator, Mapping, Sequence

from toolrl_jax.chat.toolrl_prompt import build_toolrl_system_prompt, build_toolrl_user_message
from toolrl_jax.toolcalls.parse import extract_tag, tool_call_blocks


def strip_leading_think(text: str) -> str:
    """``text`` without a leading ``<think> .. </think>`` block (linear ``str.find`` scans)."""
    body = text.lstrip()
    if body.startswith("<think>"):
        end = body.find("</think>", len("<think>"))
        if end >= 0:
            return body[end + len("</think>"):]
    return text


def has_response(text: str) -> bool:
    """True when ``text`` holds a closed ``<response> .. </response>`` block (linear scan; the
    regex it replaces took 4.7 s on ``"<response>" * 4000``)."""
    return isinstance(text, str) and extract_tag(text, "response") is not None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolTask:
    """One tool-use prompt and its known answer (see module docstring for the field shapes)."""

    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    ground_truth: str
    ground_truth_calls: list[dict[str, Any]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    __hash__ = None  # holds lists and dicts; compare with ==, do not hash

    @property
    def system(self) -> str:
        """Content of the first system message ('' if none)."""
        for m in self.messages:
            if m.get("role") == "system":
                return str(m.get("content", ""))
        return ""

    @property
    def user(self) -> str:
        """Content of the last user message ('' if none)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return str(m.get("content", ""))
        return ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ToolTask":
        return cls(
            id=str(d["id"]),
            messages=list(d["messages"]),
            tools=list(d.get("tools", [])),
            ground_truth=str(d.get("ground_truth", "")),
            ground_truth_calls=list(d.get("ground_truth_calls", [])),
            meta=dict(d.get("meta", {})),
        )


class BadRecord(ValueError):
    """A record that cannot become a ToolTask; loaders count and skip these."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadedTasks(Sequence[ToolTask]):
    """Loader result: the good tasks plus a count of skipped bad records by reason.

    Behaves as a read-only sequence of :class:`ToolTask`.
    """

    tasks: tuple[ToolTask, ...]
    source: str
    skipped: int = 0
    skip_reasons: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i):  # type: ignore[override]
        return self.tasks[i]

    def __iter__(self) -> Iterator[ToolTask]:
        return iter(self.tasks)

    def summary(self) -> str:
        s = f"{self.source}: {len(self.tasks)} tasks"
        if self.skipped:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skip_reasons.items()))
            s += f", {self.skipped} bad records skipped ({reasons})"
        return s


def collect(records, convert, source: str, limit: int | None = None) -> LoadedTasks:
    """Applies ``convert(index, record) -> ToolTask`` to each record, counting BadRecord skips.

    Any exception from ``convert`` on a record is a bad record (counted under its reason, or
    the exception class name), never fatal.
    """
    tasks: list[ToolTask] = []
    reasons: Counter[str] = Counter()
    for i, rec in enumerate(records):
        if limit is not None and len(tasks) >= limit:
            break
        try:
            tasks.append(convert(i, rec))
        except BadRecord as e:
            reasons[e.reason] += 1
        except Exception as e:  # noqa: BLE001 - a malformed record must never stop loading
            reasons[type(e).__name__] += 1
    return LoadedTasks(
        tasks=tuple(tasks), source=source, skipped=sum(reasons.values()), skip_reasons=dict(reasons)
    )


# --------------------------------------------------------------------------------------------
# ToolRL text <-> calls
# --------------------------------------------------------------------------------------------


def parse_ground_truth_calls(text: str) -> list[dict[str, Any]]:
    """Strictly parses the calls in a ToolRL ground-truth text.

    Returns ``[{"name": str, "arguments": dict}]`` (empty when there is no ``<tool_call>``).
    Raises :class:`BadRecord` ('bad_ground_truth') on anything malformed: more than one
    ``<tool_call>`` block, a line that is not a JSON object, a call without a string ``name``
    or a dict ``parameters``, or neither ``<tool_call>`` nor ``<response>`` present.
    """
    if not isinstance(text, str):
        raise BadRecord("bad_ground_truth", f"not a string: {type(text).__name__}")
    # Reasoning may mention the tags ("... inside the <tool_call> tags"): look after </think>.
    body = strip_leading_think(text)
    blocks = tool_call_blocks(body)[0]
    if not blocks:
        if "<tool_call>" in body or "</tool_call>" in body:
            raise BadRecord("bad_ground_truth", "unbalanced <tool_call> tags")
        if not has_response(body):
            raise BadRecord("bad_ground_truth", "neither <tool_call> nor <response>")
        return []
    if len(blocks) > 1:
        raise BadRecord("bad_ground_truth", "more than one <tool_call> block")
    calls = []
    for line in blocks[0].strip().split("\n"):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadRecord("bad_ground_truth", f"not JSON: {line[:60]!r} ({e.msg})") from None
        except (ValueError, RecursionError) as e:  # a 5000-digit number, 10,000-deep nesting
            raise BadRecord("bad_ground_truth", f"not JSON: {line[:60]!r} ({type(e).__name__})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise BadRecord("bad_ground_truth", f"call without a name: {line[:60]!r}")
        params = obj.get("parameters", obj.get("arguments"))
        if not isinstance(params, dict):
            raise BadRecord("bad_ground_truth", f"call without dict parameters: {line[:60]!r}")
        calls.append({"name": obj["name"], "arguments": params})
    if not calls:
        raise BadRecord("bad_ground_truth", "empty <tool_call> block")
    return calls


def render_toolrl_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    """``[{"name", "arguments"}]`` -> ToolRL JSON lines (key ``parameters``), one call per line."""
    lines = []
    for c in calls:
        args = c.get("arguments", c.get("parameters", {}))
        lines.append(json.dumps({"name": c["name"], "parameters": args}, ensure_ascii=False))
    return "\n".join(lines)


def render_toolrl_output(
    calls: Sequence[Mapping[str, Any]] | None = None,
    response: str | None = None,
    think: str = "I should use the appropriate tool with proper parameters to respond to the user's need.",
) -> str:
    """A ToolRL assistant turn: ``<think> .. </think>`` then ``<tool_call>`` and/or ``<response>``.

    Mirrors the layout of ToolRL's ground truths (``rlla_test.parquet``)::

        <think> ... </think>
        <tool_call>
        {"name": "...", "parameters": {...}}
        </tool_call>
        <response> ... </response>
    """
    parts = [f"<think> {think} </think>"]
    if calls:
        parts.append("<tool_call>\n" + render_toolrl_calls(calls) + "\n</tool_call>")
    if response is not None:
        parts.append(f"<response> {response} </response>")
    return "\n".join(parts)


def dialogue_history(turns: Sequence[tuple[str, str]]) -> str:
    """ToolRL's user message: ``**Dialogue Records History**`` then the turns.

    ``turns`` is ``[(role, text)]`` with role ``user`` (rendered ``<user> text </user>``),
    ``assistant`` (the assistant's raw ToolRL text, pasted as is) or ``obs`` (tool results,
    rendered ``<obs> text </obs>``); layout by ``chat.toolrl_prompt.build_toolrl_user_message``
    (blank line between turns, one newline before an ``<obs>``).
    """
    for role, _ in turns:
        if role not in ("user", "assistant", "obs"):
            raise ValueError(f"unknown dialogue role {role!r}")
    return build_toolrl_user_message([{"role": r, "content": t} for r, t in turns])


# --------------------------------------------------------------------------------------------
# Tools in ToolRL's system prompt
# --------------------------------------------------------------------------------------------

_TOOLS_HEADER = "**Available Tools**\n"
_TOOLS_INTRO = "In your response, you can use the following tools:\n"
_TOOLS_END = "\n\n**Steps for Each Turn**"
_TOOL_START_RE = re.compile(r"(?:^|\n)\d+\. Name: ")


def _parse_params(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return ast.literal_eval(text)  # API-Bank writes Python dict reprs
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _tools_section(system: str) -> str | None:
    """Text between ``**Available Tools**`` (and its intro line) and ``**Steps for Each Turn**``."""
    start = system.find(_TOOLS_HEADER)
    if start < 0:
        return None
    start += len(_TOOLS_HEADER)
    if system.startswith(_TOOLS_INTRO, start):
        start += len(_TOOLS_INTRO)
    end = system.find(_TOOLS_END, start)
    return None if end < 0 else system[start:end]


def parse_toolrl_tools(system: str) -> list[dict[str, Any]]:
    """Parses ``N. Name: ..\\nDescription: ..\\nParameters: {..}`` entries of a ToolRL system prompt.

    Returns JSON-schema function dicts (``required`` empty; ToolRL's prompt does not state it).
    Parameters that parse neither as JSON nor as a Python literal are kept under
    ``parameters["x-raw"]``. Never raises; returns [] when the section is missing.
    """
    section = _tools_section(system or "")
    if section is None:
        return []
    chunks = [c for c in _TOOL_START_RE.split("\n" + section) if c.strip()]
    tools = []
    for chunk in chunks:
        name, _, rest = chunk.partition("\n")
        desc, params_text = rest, ""
        if "\nParameters: " in "\n" + rest:
            desc, _, params_text = ("\n" + rest).partition("\nParameters: ")
        desc = desc.strip("\n")
        if desc.startswith("Description: "):
            desc = desc[len("Description: ") :]
        props = _parse_params(params_text) if params_text else {}
        schema: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        if isinstance(props, dict):
            schema["properties"] = props
        else:
            schema["x-raw"] = params_text.strip()
        tools.append({"name": name.strip(), "description": desc, "parameters": schema})
    return tools


def toolrl_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-schema function dict -> ToolRL's tool dict ``{name, description, parameters: properties}``.

    Accepts OpenAI-style ``{"type": "function", "function": {...}}`` wrappers too.
    """
    if "function" in tool and isinstance(tool["function"], Mapping):
        tool = tool["function"]
    params = tool.get("parameters", {}) or {}
    props = params.get("properties", params) if isinstance(params, Mapping) else params
    return {"name": tool.get("name", ""), "description": tool.get("description", ""), "parameters": props}


def toolrl_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """ToolRL's system prompt for ``tools`` (JSON-schema function dicts or ToolRL tool dicts).

    Built by ``toolrl_jax.chat.toolrl_prompt.build_toolrl_system_prompt`` from ToolRL tool dicts
    ``{name, description, parameters: properties}``.
    """
    return build_toolrl_system_prompt([toolrl_tool(t) for t in tools])
