"""The one vocabulary of tool calls, shared by every layer (parsers, tools, rollout, rewards, eval).

A :class:`ToolCall` is what a parser reads out of model text (or a dataset's ground truth); a
:class:`ToolResult` is what running it produced. Nothing here imports the rest of the package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["ErrorKind", "ToolCall", "ToolResult"]

#: Why a call failed (``ToolResult.error_kind``); ``None`` when it succeeded.
ErrorKind = Literal["unknown_tool", "bad_arguments", "exception", "timeout", "parse_error"]


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One call: ``name`` and its ``arguments``.

    ``arguments`` is a dict of JSON / Python literal values as parsed from model output; a JSON
    string (OpenAI's wire form) is accepted by the executor and decoded there.
    """

    name: str
    arguments: Mapping[str, Any] | str = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "arguments": self.arguments}


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """Outcome of one call.

    Attributes:
      name: the tool name as the model wrote it.
      ok: True if the tool returned normally.
      text: observation text for the model (the tool's output or an ``"Error: ..."`` message).
      error_kind: ``None`` or one of :data:`ErrorKind`.
      seconds: wall time from the start of the call to its result (or to the deadline).
    """

    name: str
    ok: bool
    text: str
    error_kind: ErrorKind | None = None
    seconds: float = 0.0

    def as_message(self) -> dict:
        """``{"role": "tool", "name": name, "content": text}``, the chat message of the result."""
        return {"role": "tool", "name": self.name, "content": self.text}
