"""Model output text -> tool calls, for evaluation. Never raises on garbage.

Accepted syntaxes (``syntax="auto"`` tries them in this order):

* ToolRL: ``<tool_call>`` holding one JSON object per line, ``{"name", "parameters"}``
  (``"arguments"`` accepted too). A block that is not JSON lines is tried as one JSON value
  (an object or a list of objects: hermes / Qwen style, possibly pretty-printed); several
  ``<tool_call>`` blocks are concatenated (hermes emits one block per call). A leading
  ``<think> .. </think>`` is ignored, so reasoning that mentions the tags does not count.
* Python call syntax, BFCL's prompting format: ``[func(a=1, b='x'), other(c=[1, 2])]`` or a
  bare ``func(a=1)``, optionally inside a Markdown code fence. Only literal arguments are
  accepted (``ast.literal_eval``).

Result: ``list[{"name": str, "arguments": dict}]`` when calls were decoded, ``[]`` when the
text holds no call at all, and ``None`` when it tries to call but cannot be decoded.

The decoding itself is the project's one parser, ``toolrl_jax.rewards.parse`` (ToolRL / hermes
/ Python syntaxes, bounded and defensive); this module only maps its result onto the three
outcomes above. A private copy below is used only if that module cannot be imported.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_THINK_RE = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE_RE = re.compile(r"^```(?:python|json|tool_code)?\s*\n?(.*?)\n?```$", re.DOTALL)


def _as_call(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args)
        except (json.JSONDecodeError, ValueError):
            return None
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": args}


def _parse_block(block: str) -> list[dict[str, Any]] | None:
    block = block.strip()
    if not block:
        return None
    lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
    calls = []
    for ln in lines:
        try:
            call = _as_call(json.loads(ln))
        except (json.JSONDecodeError, ValueError, RecursionError):
            call = None
        if call is None:
            break
        calls.append(call)
    else:
        return calls
    try:  # not JSON lines: one JSON value (object or list of objects)
        obj = json.loads(block)
    except (json.JSONDecodeError, ValueError, RecursionError):
        return None
    items = obj if isinstance(obj, list) else [obj]
    out = [_as_call(o) for o in items]
    if not out or any(c is None for c in out):
        return None
    return out  # type: ignore[return-value]


def parse_toolrl_calls(text: str) -> list[dict[str, Any]] | None:
    """Calls inside ``<tool_call>`` blocks; [] when there is no block, None when one is malformed."""
    if not isinstance(text, str):
        return None
    body = _THINK_RE.sub("", text, count=1)
    blocks = _TOOL_CALL_RE.findall(body)
    if not blocks:
        return None if "<tool_call>" in body else []
    calls: list[dict[str, Any]] = []
    for b in blocks:
        parsed = _parse_block(b)
        if parsed is None:
            return None
        calls.extend(parsed)
    return calls


def _call_from_ast(node: ast.AST) -> dict[str, Any] | None:
    if not isinstance(node, ast.Call) or node.args:
        return None  # BFCL's prompt asks for keyword arguments only
    try:
        name = ast.unparse(node.func)
    except Exception:  # noqa: BLE001
        return None
    if not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
        return None
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return {"name": name, "arguments": args}


def parse_python_calls(text: str) -> list[dict[str, Any]] | None:
    """``[f(a=1), g(b='x')]`` / ``f(a=1)`` -> calls; [] for empty ``[]``; None if not that syntax."""
    if not isinstance(text, str):
        return None
    s = _THINK_RE.sub("", text, count=1).strip()
    m = _FENCE_RE.match(s)
    if m:
        s = m.group(1).strip()
    if not s:
        return None
    try:
        tree = ast.parse(s, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls = [_call_from_ast(n) for n in nodes]
    if any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


def _strip_fence(text: str) -> str:
    s = _THINK_RE.sub("", text, count=1).strip()
    m = _FENCE_RE.match(s)
    return m.group(1).strip() if m else s


def _parse_with_rewards_parser(text: str, syntax: str):
    from toolrl_jax.rewards import parse as rp

    if not isinstance(text, str):
        return None
    body = _THINK_RE.sub("", text, count=1)  # reasoning may mention the tags
    if syntax in ("auto", "toolrl") and "<tool_call>" in body:
        pc = rp.parse_completion(body, "auto")
        if not pc.ok:
            return None
        return [{"name": c.name, "arguments": dict(c.arguments)} for c in pc.tool_calls]
    if syntax == "toolrl":
        return []
    res = rp.parse_tool_calls(_strip_fence(body), "python")
    if res.ok:
        return [{"name": c.name, "arguments": dict(c.arguments)} for c in res.calls]
    return None if syntax == "python" else []


def parse_calls(text: str, syntax: str = "auto") -> list[dict[str, Any]] | None:
    """Decodes the tool calls in a model's output (see module docstring).

    Args:
      text: the assistant's output.
      syntax: ``"toolrl"`` (``<tool_call>`` JSON), ``"python"`` (BFCL call syntax) or ``"auto"``.
    """
    if syntax not in ("auto", "toolrl", "python"):
        raise ValueError(f"unknown call syntax {syntax!r}")
    try:
        return _parse_with_rewards_parser(text, syntax)
    except ImportError:
        pass
    if syntax == "toolrl":
        return parse_toolrl_calls(text)
    if syntax == "python":
        return parse_python_calls(text)
    if syntax != "auto":
        raise ValueError(f"unknown call syntax {syntax!r}")
    if isinstance(text, str) and "<tool_call>" in text:
        return parse_toolrl_calls(text)
    py = parse_python_calls(text)
    return [] if py is None else py


def render_python_calls(calls: list[dict[str, Any]]) -> str:
    """``[{"name", "arguments"}]`` -> BFCL's ``[f(a=1), g(b='x')]``."""
    parts = []
    for c in calls:
        args = ", ".join(f"{k}={v!r}" for k, v in c["arguments"].items())
        parts.append(f"{c['name']}({args})")
    return "[" + ", ".join(parts) + "]"
