"""Defensive parsing of assistant text: ``<think>``, ``<tool_call>``, ``<response>`` and the calls.

Host-side, pure Python. Model output is untrusted: nothing here raises on any input text; a
failure is returned as ``ok=False`` with a one-line ``reason``. Work is bounded: every scan is a
linear ``str.find`` loop (no backtracking regex), Python-call parsing is capped at
``max_python_chars`` and JSON nesting is capped at ``max_depth``.

Three call syntaxes are understood:

* ``toolrl`` - ToolRL (arXiv 2504.13958) JSON Lines: one ``{"name": ..., "parameters": {...}}``
  object per line of the *first* ``<tool_call>`` block, exactly as the released code reads it
  (``text.split("<tool_call>")[1].split("</tool_call>")[0].strip().split("\\n")``).
* ``hermes`` - Qwen / Hermes JSON: each ``<tool_call>`` block holds one JSON object
  ``{"name": ..., "arguments": {...}}`` (``arguments`` may also be a JSON string, or the key
  ``parameters``), several concatenated objects, or a JSON list of them. Pretty-printed JSON is fine.
* ``python`` - Python call syntax as BFCL uses: ``f(a=1, b="x")`` or ``[f(a=1), mod.g(b=[1, 2])]``.
  Parsed with :mod:`ast`; argument values must be literals (``ast.literal_eval``), never evaluated.

``auto`` tries ``toolrl``, then ``hermes``, then ``python`` and keeps the first success.

Public API::

    parse_completion(text, syntax="auto") -> ParsedCompletion
    parse_tool_calls(text, syntax="auto") -> ToolCallParse     # text = a block's inside or bare calls
    tool_call_blocks(text) -> (blocks, reason)                 # every <tool_call>...</tool_call> inside
    first_tool_call_block(text) -> str | None                  # the released code's extraction rule
    extract_tag(text, tag) -> str | None                       # first <tag>...</tag> inside
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any, Literal

from toolrl_jax.toolcalls.types import ToolCall

Syntax = Literal["auto", "toolrl", "hermes", "python"]
SYNTAXES = ("auto", "toolrl", "hermes", "python")

#: Default caps (characters). Completions of a 1-2k token budget are ~10k characters.
MAX_CHARS = 1_000_000
MAX_PYTHON_CHARS = 100_000
MAX_DEPTH = 64

_TOOL_OPEN, _TOOL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolCallParse:
    """Result of :func:`parse_tool_calls`.

    Attributes:
      calls: the well-formed calls (empty when ``ok`` is False).
      ok: True when every call parsed and is well formed.
      reason: '' when ok, else a one-line description of the first problem.
      syntax: the syntax that produced ``calls`` ('toolrl' | 'hermes' | 'python' | '').
      raw: the decoded objects before validation (JSON syntaxes; may hold non-dicts), in order.
        The ToolRL compatibility scorer needs them to reproduce the released code's quirks.
    """

    calls: tuple[ToolCall, ...] = ()
    ok: bool = False
    reason: str = ""
    syntax: str = ""
    raw: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ParsedCompletion:
    """One assistant turn split into its parts (see :func:`parse_completion`).

    Attributes:
      text: the stripped input text.
      think: inside of the first ``<think>...</think>`` (None if absent).
      response: inside of the first ``<response>...</response>`` (None if absent).
      tool_call_blocks: the inside of every closed ``<tool_call>`` block, in order.
      tool_calls: the parsed calls (empty if none or on failure).
      has_tool_call: a ``<tool_call>`` tag occurs in the text.
      ok: False only if a ``<tool_call>`` tag is present but its calls do not parse.
      reason: '' or the failure reason.
      syntax: the call syntax used.
    """

    text: str
    think: str | None
    response: str | None
    tool_call_blocks: tuple[str, ...]
    tool_calls: tuple[ToolCall, ...]
    has_tool_call: bool
    ok: bool
    reason: str
    syntax: str


# ----------------------------------------------------------------------------------- tags
def extract_tag(text: str, tag: str) -> str | None:
    """Inside of the first ``<tag>...</tag>`` (linear scan), or None when not closed."""
    if not isinstance(text, str):
        return None
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    i = text.find(open_t)
    if i < 0:
        return None
    j = text.find(close_t, i + len(open_t))
    if j < 0:
        return None
    return text[i + len(open_t) : j]


def first_tool_call_block(text: str) -> str | None:
    """The released ToolRL extraction: ``text.split("<tool_call>")[1].split("</tool_call>")[0]``.

    Returns None when either tag is missing anywhere in ``text`` (the released code's asserts).
    The segment runs from the first ``<tool_call>`` to the next ``<tool_call>`` (or the end) and is
    then cut at its first ``</tool_call>``, reproducing ``str.split`` exactly.
    """
    if not isinstance(text, str) or _TOOL_OPEN not in text or _TOOL_CLOSE not in text:
        return None
    start = text.find(_TOOL_OPEN) + len(_TOOL_OPEN)
    nxt = text.find(_TOOL_OPEN, start)
    seg = text[start:] if nxt < 0 else text[start:nxt]
    cut = seg.find(_TOOL_CLOSE)
    return seg if cut < 0 else seg[:cut]


def tool_call_blocks(text: str) -> tuple[tuple[str, ...], str]:
    """Inside of every ``<tool_call>...</tool_call>`` block, in order, and a reason ('' if fine).

    A ``<tool_call>`` without a closing tag (truncated generation) gives reason
    ``'unclosed <tool_call>'``; the closed blocks before it are still returned.
    """
    blocks: list[str] = []
    if not isinstance(text, str):
        return (), "not a string"
    pos = 0
    while True:
        i = text.find(_TOOL_OPEN, pos)
        if i < 0:
            return tuple(blocks), ""
        j = text.find(_TOOL_CLOSE, i + len(_TOOL_OPEN))
        if j < 0:
            return tuple(blocks), "unclosed <tool_call>"
        blocks.append(text[i + len(_TOOL_OPEN) : j])
        pos = j + len(_TOOL_CLOSE)


# ------------------------------------------------------------------------------- validation
def _depth_ok(obj: Any, max_depth: int) -> bool:
    """Iterative nesting check (no recursion, so deep input cannot blow the stack)."""
    stack = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            if d >= max_depth:
                return False
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            if d >= max_depth:
                return False
            stack.extend((v, d + 1) for v in o)
    return True


def _to_call(obj: Any, idx: int, arg_keys: tuple[str, ...]) -> tuple[ToolCall | None, str]:
    """Validate one decoded JSON object as a call; returns (call, '') or (None, reason)."""
    if not isinstance(obj, dict):
        return None, f"call {idx}: not a JSON object"
    if "name" not in obj:
        return None, f"call {idx}: missing 'name'"
    name = obj["name"]
    if not isinstance(name, str):
        return None, f"call {idx}: 'name' is not a string"
    key = next((k for k in arg_keys if k in obj), None)
    if key is None:
        return None, f"call {idx}: missing '{arg_keys[0]}'"
    args = obj[key]
    if isinstance(args, str) and key == "arguments":  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None, f"call {idx}: 'arguments' string is not JSON"
    if not isinstance(args, dict):
        return None, f"call {idx}: '{key}' is not an object"
    return ToolCall(name=name, arguments=args), ""


def _finish(raw: list, syntax: str, arg_keys: tuple[str, ...], max_depth: int) -> ToolCallParse:
    calls = []
    for i, obj in enumerate(raw, 1):
        if not _depth_ok(obj, max_depth):
            return ToolCallParse(ok=False, reason=f"call {i}: nesting deeper than {max_depth}",
                                 syntax=syntax, raw=tuple(raw))
        call, reason = _to_call(obj, i, arg_keys)
        if call is None:
            return ToolCallParse(ok=False, reason=reason, syntax=syntax, raw=tuple(raw))
        calls.append(call)
    return ToolCallParse(calls=tuple(calls), ok=True, syntax=syntax, raw=tuple(raw))


def _short(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg[:120]


# ------------------------------------------------------------------------------- syntaxes
def _parse_toolrl(text: str, max_depth: int) -> ToolCallParse:
    lines = text.strip().split("\n")
    raw = []
    for i, line in enumerate(lines, 1):
        try:
            raw.append(json.loads(line))
        except (ValueError, RecursionError, MemoryError) as e:
            return ToolCallParse(ok=False, reason=f"line {i}: invalid JSON ({_short(e)})",
                                 syntax="toolrl", raw=tuple(raw))
    return _finish(raw, "toolrl", ("parameters",), max_depth)


def _parse_hermes(text: str, max_depth: int) -> ToolCallParse:
    decoder = json.JSONDecoder()
    raw: list = []
    s = text.strip()
    pos, n = 0, len(s)
    if n == 0:
        return ToolCallParse(ok=False, reason="empty tool call", syntax="hermes")
    while pos < n:
        try:
            obj, end = decoder.raw_decode(s, pos)
        except (ValueError, RecursionError, MemoryError) as e:
            return ToolCallParse(ok=False, reason=f"invalid JSON ({_short(e)})", syntax="hermes",
                                 raw=tuple(raw))
        if isinstance(obj, list):
            raw.extend(obj)
        else:
            raw.append(obj)
        pos = end
        while pos < n and s[pos] in " \t\r\n,;":
            pos += 1
    return _finish(raw, "hermes", ("arguments", "parameters"), max_depth)


def _dotted_name(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _parse_python(text: str, max_depth: int, max_chars: int) -> ToolCallParse:
    s = text.strip()
    if len(s) > max_chars:
        return ToolCallParse(ok=False, reason=f"python call text longer than {max_chars} chars",
                             syntax="python")
    if not s:
        return ToolCallParse(ok=False, reason="empty tool call", syntax="python")
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return ToolCallParse(ok=False, reason=f"not Python call syntax ({_short(e)})", syntax="python")
    body = tree.body
    nodes = list(body.elts) if isinstance(body, (ast.List, ast.Tuple)) else [body]
    calls = []
    for i, node in enumerate(nodes, 1):
        if not isinstance(node, ast.Call):
            return ToolCallParse(ok=False, reason=f"call {i}: not a function call", syntax="python")
        name = _dotted_name(node.func)
        if name is None:
            return ToolCallParse(ok=False, reason=f"call {i}: function name is not a dotted name",
                                 syntax="python")
        if node.args:
            return ToolCallParse(ok=False, reason=f"call {i}: positional arguments are not supported",
                                 syntax="python")
        args = {}
        for kw in node.keywords:
            if kw.arg is None:
                return ToolCallParse(ok=False, reason=f"call {i}: **kwargs is not supported",
                                     syntax="python")
            try:
                value = ast.literal_eval(kw.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, OverflowError):
                return ToolCallParse(ok=False, reason=f"call {i}: argument '{kw.arg}' is not a literal",
                                     syntax="python")
            args[kw.arg] = value
        if not _depth_ok(args, max_depth):
            return ToolCallParse(ok=False, reason=f"call {i}: nesting deeper than {max_depth}",
                                 syntax="python")
        calls.append(ToolCall(name=name, arguments=args))
    return ToolCallParse(calls=tuple(calls), ok=True, syntax="python",
                         raw=tuple({"name": c.name, "arguments": c.arguments} for c in calls))


def parse_tool_calls(
    text: str,
    syntax: Syntax = "auto",
    *,
    max_chars: int = MAX_CHARS,
    max_python_chars: int = MAX_PYTHON_CHARS,
    max_depth: int = MAX_DEPTH,
) -> ToolCallParse:
    """Parse the calls in ``text`` (the inside of a ``<tool_call>`` block, or bare BFCL calls).

    Never raises. ``syntax='auto'`` tries toolrl, hermes, python in that order; on total failure
    the reason of the first attempt is reported.
    """
    try:
        if not isinstance(text, str):
            return ToolCallParse(ok=False, reason="not a string")
        if len(text) > max_chars:
            return ToolCallParse(ok=False, reason=f"text longer than {max_chars} chars")
        if syntax == "toolrl":
            return _parse_toolrl(text, max_depth)
        if syntax == "hermes":
            return _parse_hermes(text, max_depth)
        if syntax == "python":
            return _parse_python(text, max_depth, max_python_chars)
        if syntax != "auto":
            return ToolCallParse(ok=False, reason=f"unknown syntax {syntax!r}")
        first = _parse_toolrl(text, max_depth)
        if first.ok:
            return first
        for attempt in (_parse_hermes(text, max_depth), _parse_python(text, max_depth, max_python_chars)):
            if attempt.ok:
                return attempt
        return first
    except Exception as e:  # noqa: BLE001 - untrusted input must never raise
        return ToolCallParse(ok=False, reason=f"parser error ({type(e).__name__})")


def parse_completion(
    text: str,
    syntax: Syntax = "auto",
    *,
    max_chars: int = MAX_CHARS,
    max_python_chars: int = MAX_PYTHON_CHARS,
    max_depth: int = MAX_DEPTH,
) -> ParsedCompletion:
    """Split an assistant turn into think / tool calls / response. Never raises.

    The text is stripped first (as the released ToolRL code strips the assistant message).
    With ``syntax='toolrl'`` only the first ``<tool_call>`` block is read, by the released rule
    (:func:`first_tool_call_block`); other syntaxes read every closed block and concatenate the calls.
    ``ok`` is True when there is no ``<tool_call>`` tag at all (nothing to parse, no calls).
    """
    try:
        if not isinstance(text, str):
            text = ""
        if len(text) > max_chars:
            return ParsedCompletion(text=text[:0], think=None, response=None, tool_call_blocks=(),
                                    tool_calls=(), has_tool_call=_TOOL_OPEN in text, ok=False,
                                    reason=f"text longer than {max_chars} chars", syntax="")
        text = text.strip()
        think = extract_tag(text, "think")
        response = extract_tag(text, "response")
        has_call = _TOOL_OPEN in text
        kw = dict(max_chars=max_chars, max_python_chars=max_python_chars, max_depth=max_depth)
        if not has_call:
            return ParsedCompletion(text=text, think=think, response=response, tool_call_blocks=(),
                                    tool_calls=(), has_tool_call=False, ok=True, reason="", syntax="")
        if syntax == "toolrl":
            block = first_tool_call_block(text)
            if block is None:
                return ParsedCompletion(text=text, think=think, response=response, tool_call_blocks=(),
                                        tool_calls=(), has_tool_call=True, ok=False,
                                        reason="unclosed <tool_call>", syntax="toolrl")
            res = parse_tool_calls(block, "toolrl", **kw)
            return ParsedCompletion(text=text, think=think, response=response,
                                    tool_call_blocks=(block,), tool_calls=res.calls,
                                    has_tool_call=True, ok=res.ok, reason=res.reason, syntax="toolrl")
        blocks, reason = tool_call_blocks(text)
        if reason:
            return ParsedCompletion(text=text, think=think, response=response, tool_call_blocks=blocks,
                                    tool_calls=(), has_tool_call=True, ok=False, reason=reason,
                                    syntax=syntax)
        calls: list[ToolCall] = []
        used = ""
        for k, block in enumerate(blocks, 1):
            res = parse_tool_calls(block, syntax, **kw)
            if not res.ok:
                why = res.reason if len(blocks) == 1 else f"block {k}: {res.reason}"
                return ParsedCompletion(text=text, think=think, response=response,
                                        tool_call_blocks=blocks, tool_calls=(), has_tool_call=True,
                                        ok=False, reason=why, syntax=res.syntax)
            calls.extend(res.calls)
            used = used or res.syntax
        return ParsedCompletion(text=text, think=think, response=response, tool_call_blocks=blocks,
                                tool_calls=tuple(calls), has_tool_call=True, ok=True, reason="",
                                syntax=used)
    except Exception as e:  # noqa: BLE001 - untrusted input must never raise
        return ParsedCompletion(text="", think=None, response=None, tool_call_blocks=(), tool_calls=(),
                                has_tool_call=False, ok=False,
                                reason=f"parser error ({type(e).__name__})", syntax="")

