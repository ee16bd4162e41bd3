"""Model output text -> tool calls, for evaluation. Never raises on garbage.

Accepted syntaxes (``syntax="auto"`` tries them in this order):

* ToolRL: ``<tool_call>`` holding one JSON object per line, ``{"name", "parameters"}``
  (``"arguments"`` accepted too); a block that is not JSON lines is read as hermes / Qwen JSON
  (one object or a list, possibly pretty-printed); several blocks are concatenated. A leading
  ``<think> .. </think>`` is ignored, so reasoning that mentions the tags does not count.
* Python call syntax, BFCL's prompting format: ``[func(a=1, b='x'), other(c=[1, 2])]`` or a
  bare ``func(a=1)``, optionally inside a Markdown code fence. Only keyword literals are
  accepted (``ast.literal_eval``; nothing is evaluated).

Result: ``list[{"name": str, "arguments": dict}]`` when calls were decoded, ``[]`` when the
text holds no call at all, and ``None`` when it tries to call but cannot be decoded.

The decoding itself is the project's one parser, ``toolrl_jax.toolcalls.parse`` (bounded and
defensive); this module maps its result onto the three outcomes above.
"""

from __future__ import annotations

from typing import Any

from toolrl_jax.data.task import strip_leading_think
from toolrl_jax.toolcalls import parse as rp

_FENCE = "```"
_FENCE_LANGUAGES = ("python", "json", "tool_code")


def _strip_fence(text: str) -> str:
    """The inside of a Markdown code fence around the whole text (language tag dropped), else
    the stripped text. Linear: no backtracking regex (``"```" + "\n" * 20000`` took 9 s)."""
    s = text.strip()
    if len(s) < 2 * len(_FENCE) or not (s.startswith(_FENCE) and s.endswith(_FENCE)):
        return s
    inner = s[len(_FENCE):-len(_FENCE)]
    for language in _FENCE_LANGUAGES:
        if inner.startswith(language):
            inner = inner[len(language):]
            break
    return inner.strip()


def _as_dicts(calls) -> list[dict[str, Any]]:
    return [{"name": c.name, "arguments": dict(c.arguments)} for c in calls]


def parse_calls(text: str, syntax: str = "auto") -> list[dict[str, Any]] | None:
    """Decodes the tool calls in a model's output (see module docstring).

    Args:
      text: the assistant's output.
      syntax: ``"toolrl"`` (``<tool_call>`` JSON only), ``"python"`` (BFCL call syntax only) or
        ``"auto"``.
    """
    if syntax not in ("auto", "toolrl", "python"):
        raise ValueError(f"unknown call syntax {syntax!r}")
    if not isinstance(text, str):
        return None
    try:
        body = strip_leading_think(text)  # reasoning may mention the tags
        if syntax != "python" and "<tool_call>" in body:
            pc = rp.parse_completion(body, "auto")
            return _as_dicts(pc.tool_calls) if pc.ok else None
        if syntax == "toolrl":
            return []
        res = rp.parse_tool_calls(_strip_fence(body), "python")
        if res.ok:
            return _as_dicts(res.calls)
        return None if syntax == "python" else []
    except Exception:  # noqa: BLE001 - untrusted output must never stop an evaluation
        return None


def render_python_calls(calls: list[dict[str, Any]]) -> str:
    """``[{"name", "arguments"}]`` -> BFCL's ``[f(a=1), g(b='x')]``."""
    parts = []
    for c in calls:
        args = ", ".join(f"{k}={v!r}" for k, v in c["arguments"].items())
        parts.append(f"{c['name']}({args})")
    return "[" + ", ".join(parts) + "]"
