"""Tool turns: what an environment gives the rollout engine (calls, observations, stops)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class Environment:
    """Everything multi-turn rollouts need from an environment.

    Attributes:
      executor: ``ToolExecutor``-like: ``start(uid, task)``, ``submit(uid, calls)`` -> Future of
        ``list[ToolResult]``, ``finish(uid)``.
      extract_calls: ``f(turn_text) -> (calls, reason)``.
      observation_format: 'toolrl' | 'hermes' | 'native' | 'interpreter'.
      tool_stop_strings: stop strings that end a turn with a tool call.
      stop_strings: stop strings that end the trajectory.
      render_observation / decode_text: for tokenizer-free environments (tests).
    """

    executor: Any
    extract_calls: Callable[[str], tuple[list[Any], str]]
    observation_format: str = "hermes"
    tool_stop_strings: tuple[str, ...] = ("</tool_call>",)
    stop_strings: tuple[str, ...] = ()
    render_observation: Callable | None = None
    decode_text: Callable | None = None
