"""FTRL per-turn rewards (arXiv 2508.08791): reward each turn of a multi-turn tool episode on the
sub-goals it solves.

    tool-call turn:   r = 2 s / (k + 1)     s = calls this turn that solve a still-open sub-goal,
                                            k = calls this turn
    text-answer turn: r = 1 / (1 + u)       u = sub-goals still unsolved when answering

A turn whose k calls all solve open goals scores 2k/(k+1) (1 for one call, -> 2 for many); every
extra or useless call dilutes it; answering early costs 1/(1+u).

Host side: :func:`ftrl_turn_counts` matches a turn's calls to the open sub-goals (by default each
sub-goal is an expected :class:`~toolrl_jax.toolcalls.parse.ToolCall`; any goal type works with a
``solves(call, goal)`` matcher, e.g. the state predicates of ``toolrl_jax.envgen.episode``); each
sub-goal is solved at most once and each call solves at most one. Device side:
:func:`ftrl_turn_reward` (jitted, any shape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from toolrl_jax.rewards.encode import value_id
from toolrl_jax.toolcalls.parse import ToolCall

__all__ = ["ftrl_turn_counts", "ftrl_turn_reward"]

G = TypeVar("G")


def _call_key(call: ToolCall, equality: str) -> int:
    return value_id({"name": call.name, "arguments": dict(call.arguments)}, equality)


def ftrl_turn_counts(
    calls: Sequence[Any],
    open_goals: Sequence[G],
    equality: str = "strict",
    *,
    solves: Callable[[Any, G], bool] | None = None,
) -> tuple[int, int, list[G]]:
    """(s, k, goals still open after this turn) for one tool-call turn.

    k = len(calls) (failed calls included). Without ``solves``, a call solves an open goal when
    its name and arguments equal the goal's (``equality`` as in the ToolRL encoder); with it, a
    call solves the first open goal ``g`` with ``solves(call, g)``. Each goal is solved at most
    once, so duplicate calls solve nothing more.
    """
    remaining = list(open_goals)
    if solves is not None:
        s = 0
        for call in calls:
            j = next((i for i, g in enumerate(remaining) if solves(call, g)), None)
            if j is not None:
                remaining.pop(j)
                s += 1
        return s, len(calls), remaining
    keys = [_call_key(g, equality) for g in remaining]
    s = 0
    for call in calls:
        k = _call_key(call, equality)
        if k in keys:
            j = keys.index(k)
            keys.pop(j)
            remaining.pop(j)
            s += 1
    return s, len(calls), remaining


@jax.jit
def ftrl_turn_reward(num_calls, num_solved, is_text_answer, num_unsolved):
    """Per-turn reward, float32, same shape as the inputs.

    Args:
      num_calls: k, calls made this turn.
      num_solved: s, calls that solved a still-open sub-goal.
      is_text_answer: True where the turn is a final text answer instead of calls.
      num_unsolved: u, sub-goals unsolved at that point (used for text answers).
    """
    k = jnp.asarray(num_calls, jnp.float32)
    s = jnp.asarray(num_solved, jnp.float32)
    u = jnp.asarray(num_unsolved, jnp.float32)
    return jnp.where(jnp.asarray(is_text_answer, bool), 1.0 / (1.0 + u), 2.0 * s / (k + 1.0)).astype(jnp.float32)
