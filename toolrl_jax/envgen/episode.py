"""Sub-goals, guards, replay of an episode on a fresh world, and FTRL's per-turn reward.

Sub-goals (:class:`SubGoal`, JSON round-trip with ``to_dict`` / ``from_dict``):

* ``call``: a successful call of ``tool`` whose effective arguments (defaults filled in) equal
  ``arguments`` (numbers to 6 decimals, strings case-insensitive). Read / search / compute steps.
* ``record``: on the entity tables, a record of ``entity`` matching every ``where`` field exists
  (``exists: true``; with ``new: true`` it must not be a seeded record) or none does
  (``exists: false``). Create / update / delete steps. A call *solves* it when the predicate is
  false before the call and true after it.
* ``ask``: a text answer whose ``<response>`` mentions one of ``keywords`` (a question to the
  user for missing information).

Guards (:class:`Guard`) must hold for success but earn no per-turn reward: ``not_called``
(``tool`` was never called) and ``unchanged`` (``entity``'s table equals the seeded one).

:func:`replay` runs an episode's turns (:class:`TurnInput`: the calls parsed from each assistant
turn, its text, and how many calls failed to parse) on a fresh world, exactly as the executor
would (schema check, then the world's method), and records each call's outcome with the state
before and after it. :func:`ftrl_turn_rewards` then scores each turn (arXiv 2508.08791):

    tool-call turn:  r = 2 s / (k + 1)   k = calls this turn (failed and unparseable ones too),
                                         s = calls that solve a still-open sub-goal (each
                                             sub-goal is solved once; a call solves at most one)
    text-only turn:  r = 1 / (1 + u)     u = sub-goals still open after the turn's text has
                                             answered any open ``ask`` sub-goals
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from toolrl_jax.envgen.world import Snapshot, ToolError, World, tool_documents, values_equal
from toolrl_jax.rewards.ftrl import ftrl_turn_counts, ftrl_turn_reward
from toolrl_jax.toolcalls.parse import extract_tag
from toolrl_jax.toolcalls.types import ToolCall
from toolrl_jax.tools.base import validate_arguments
from toolrl_jax.tools.executor import render_observation

__all__ = [
    "CallOutcome", "Episode", "EpisodeScore", "Guard", "SubGoal", "TurnInput", "TurnRecord",
    "ftrl_turn_rewards", "guards_hold", "replay", "response_text", "score_episode", "subgoal_status",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubGoal:
    """A checkable sub-goal (module docstring); ``step`` = index of the ground-truth call (or -1)."""

    kind: Literal["call", "record", "ask"]
    tool: str = ""
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    entity: str = ""
    where: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    exists: bool = True
    new: bool = False
    keywords: tuple[str, ...] = ()
    step: int = -1

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "step": self.step}
        if self.kind == "call":
            d.update(tool=self.tool, arguments=dict(self.arguments))
        elif self.kind == "record":
            d.update(entity=self.entity, where=dict(self.where), exists=self.exists, new=self.new)
        else:
            d.update(keywords=list(self.keywords))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SubGoal":
        return cls(kind=d["kind"], tool=d.get("tool", ""), arguments=dict(d.get("arguments", {})),
                   entity=d.get("entity", ""), where=dict(d.get("where", {})), exists=bool(d.get("exists", True)),
                   new=bool(d.get("new", False)), keywords=tuple(d.get("keywords", ())), step=int(d.get("step", -1)))

    def holds(self, state: Snapshot) -> bool:
        """``record`` predicate on ``state`` (False for other kinds)."""
        if self.kind != "record":
            return False
        table = state.tables.get(self.entity, {})
        seeded = state.initial_keys.get(self.entity, frozenset())
        found = any(all(values_equal(rec.get(f), v) for f, v in self.where.items())
                    for key, rec in table.items() if not (self.new and key in seeded))
        return found == self.exists


@dataclasses.dataclass(frozen=True, kw_only=True)
class Guard:
    kind: Literal["not_called", "unchanged"]
    tool: str = ""
    entity: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tool": self.tool, "entity": self.entity}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Guard":
        return cls(kind=d["kind"], tool=d.get("tool", ""), entity=d.get("entity", ""))


@dataclasses.dataclass(frozen=True)
class TurnInput:
    """One assistant turn to replay: the calls it made, its text, calls that failed to parse."""

    calls: tuple[ToolCall, ...] = ()
    text: str = ""
    failed_calls: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallOutcome:
    """One executed (or refused) call. ``effective``: validated arguments with defaults (None when
    the call failed); ``before`` / ``after``: the state around the call."""

    name: str
    arguments: Mapping[str, Any]
    ok: bool
    text: str
    effective: Mapping[str, Any] | None
    before: Snapshot
    after: Snapshot


@dataclasses.dataclass(frozen=True)
class TurnRecord:
    calls: tuple[CallOutcome, ...]
    text: str = ""

    @property
    def is_text_answer(self) -> bool:
        return not self.calls


@dataclasses.dataclass(frozen=True)
class Episode:
    turns: tuple[TurnRecord, ...]
    initial: Snapshot
    final: Snapshot


def _run_call(world: World, docs: Mapping[str, dict], call: ToolCall) -> tuple[bool, str, dict | None]:
    """(ok, text, effective arguments) as ``ToolExecutor`` + the world would produce them."""
    name, args = call.name, call.arguments
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return False, "Error: arguments are not JSON", None
    if not isinstance(name, str) or name not in docs:
        return False, f"Error: unknown tool '{name}'", None
    if not isinstance(args, Mapping):
        return False, "Error: arguments must be an object", None
    errors = validate_arguments(docs[name]["parameters"], dict(args))
    if errors:
        return False, "Error: invalid arguments: " + "; ".join(errors), None
    try:
        effective = world.effective_arguments(name, args)
        value = world.call(name, args)
    except ToolError as e:
        return False, f"Error: {e}", None
    return True, render_observation(value), effective


def replay(world: World, turns: Sequence[TurnInput]) -> Episode:
    """Runs every turn's calls in order on ``world`` (mutated) and records the outcomes."""
    docs = tool_documents(world.spec)
    initial = world.snapshot()
    state = initial
    records = []
    for turn in turns:
        outcomes = []
        for call in turn.calls:
            ok, text, effective = _run_call(world, docs, call)
            after = world.snapshot() if ok else state
            outcomes.append(CallOutcome(name=str(call.name), arguments=dict(call.arguments) if isinstance(
                call.arguments, Mapping) else {}, ok=ok, text=text, effective=effective, before=state, after=after))
            state = after
        for _ in range(turn.failed_calls):
            outcomes.append(CallOutcome(name="", arguments={}, ok=False, text="Error: could not parse the call",
                                        effective=None, before=state, after=state))
        records.append(TurnRecord(calls=tuple(outcomes), text=turn.text))
    return Episode(turns=tuple(records), initial=initial, final=state)


def response_text(text: str) -> str:
    """The ``<response>`` of a turn, else the text after ``</think>`` (for ``ask`` sub-goals)."""
    response = extract_tag(text or "", "response")
    if response is not None:
        return response
    text = text or ""
    end = text.find("</think>")
    return text[end + len("</think>"):] if end >= 0 else text


def _asks(goal: SubGoal, text: str) -> bool:
    said = response_text(text).casefold()
    return goal.kind == "ask" and any(k.casefold() in said for k in goal.keywords)


def call_solves(outcome: CallOutcome, goal: SubGoal) -> bool:
    """Does this call solve ``goal`` (see module docstring)?"""
    if not outcome.ok:
        return False
    if goal.kind == "call":
        eff = outcome.effective or {}
        return outcome.name == goal.tool and set(eff) == set(goal.arguments) and all(
            values_equal(eff[k], v) for k, v in goal.arguments.items())
    if goal.kind == "record":
        return goal.holds(outcome.after) and not goal.holds(outcome.before)
    return False


def ftrl_turn_rewards(turns: Sequence[TurnRecord], subgoals: Sequence[SubGoal]) -> list[float]:
    """FTRL per-turn rewards of a replayed episode (formula in the module docstring).

    Counting reuses ``rewards.ftrl.ftrl_turn_counts`` (with :func:`call_solves` as the matcher)
    and the values come from the jitted ``rewards.ftrl.ftrl_turn_reward``.
    """
    open_goals = list(subgoals)
    ks, ss, texts, unsolved = [], [], [], []
    for turn in turns:
        if turn.is_text_answer:
            open_goals = [g for g in open_goals if not _asks(g, turn.text)]
            ks.append(0), ss.append(0), texts.append(True), unsolved.append(len(open_goals))
        else:
            s, k, open_goals = ftrl_turn_counts(turn.calls, open_goals, solves=call_solves)
            ks.append(k), ss.append(s), texts.append(False), unsolved.append(len(open_goals))
    if not turns:
        return []
    values = ftrl_turn_reward(np.array(ks), np.array(ss), np.array(texts), np.array(unsolved))
    return [float(v) for v in np.asarray(values)]


def subgoal_status(episode: Episode, subgoals: Sequence[SubGoal]) -> list[bool]:
    """Whether each sub-goal is achieved: ``record`` on the final state, ``call`` by any call,
    ``ask`` by any text-only turn."""
    calls = [c for t in episode.turns for c in t.calls]
    texts = [t.text for t in episode.turns if t.is_text_answer]
    out = []
    for g in subgoals:
        if g.kind == "record":
            out.append(g.holds(episode.final))
        elif g.kind == "call":
            out.append(any(call_solves(c, g) for c in calls))
        else:
            out.append(any(_asks(g, t) for t in texts))
    return out


def guards_hold(episode: Episode, guards: Sequence[Guard]) -> bool:
    called = {c.name for t in episode.turns for c in t.calls}
    for g in guards:
        if g.kind == "not_called" and g.tool in called:
            return False
        if g.kind == "unchanged" and episode.final.tables.get(g.entity) != episode.initial.tables.get(g.entity):
            return False
    return True


@dataclasses.dataclass(frozen=True)
class EpisodeScore:
    """turn_rewards: FTRL per turn; solved: per sub-goal; success: all solved and guards hold."""

    turn_rewards: tuple[float, ...]
    solved: tuple[bool, ...]
    guards_ok: bool

    @property
    def success(self) -> bool:
        return all(self.solved) and self.guards_ok

    @property
    def completion(self) -> float:
        return sum(self.solved) / len(self.solved) if self.solved else 1.0


def score_episode(world: World, turns: Sequence[TurnInput], subgoals: Sequence[SubGoal],
                  guards: Sequence[Guard] = (), *, turn_rewards: bool = True) -> EpisodeScore:
    """Replays ``turns`` on ``world`` and scores them (per-turn FTRL unless ``turn_rewards=False``,
    sub-goals, guards)."""
    episode = replay(world, turns)
    rewards = ftrl_turn_rewards(episode.turns, subgoals) if turn_rewards else []
    return EpisodeScore(turn_rewards=tuple(rewards),
                        solved=tuple(subgoal_status(episode, subgoals)), guards_ok=guards_hold(episode, guards))
