"""Training pieces over a built directory (the lead registers them as data source / environment /
reward component):

* :func:`load_env_tasks` -> ``list[ToolTask]`` in ToolRL's prompt (system prompt listing the shown
  tools, ``**Dialogue Records History**`` user message); ``ground_truth`` is the first assistant
  turn of the ground truth (as ``bfcl_training_tasks`` does for BFCL), ``meta`` carries the level,
  sub-goals, guards, all ground-truth turns and the environment reference ``meta["env"]``.
* :func:`env_for_tasks` -> the executor's ``ToolEnvironment`` (``EnvgenEnvironment``): one world
  per trajectory, chosen by the trajectory's task.
* :func:`trajectory_turns` / :func:`text_turns` -> replay inputs from a rollout ``Trajectory`` row
  or from a list of assistant turn texts; :func:`score_task` -> per-turn FTRL rewards, sub-goals
  reached and final-state success (:class:`~toolrl_jax.envgen.episode.EpisodeScore`).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolrl_jax.data.task import ToolTask, dialogue_history, render_toolrl_output, toolrl_system_prompt
from toolrl_jax.envgen.builder import read_env_dir
from toolrl_jax.envgen.episode import EpisodeScore, Guard, SubGoal, TurnInput, score_episode
from toolrl_jax.envgen.spec import DomainSpec, load_spec
from toolrl_jax.envgen.world import EnvgenEnvironment, make_world, tool_documents
from toolrl_jax.errors import DataError
from toolrl_jax.toolcalls.parse import parse_completion
from toolrl_jax.toolcalls.types import ToolCall

__all__ = ["env_for_tasks", "ftrl_turn_rewards_for", "load_env_tasks", "score_task", "text_turns",
           "trajectory_turns"]


def _think(calls: Sequence[dict]) -> str:
    names = ", ".join(dict.fromkeys(c["name"] for c in calls))
    return f"I should call {names} with the values the user gave."


def load_env_tasks(path: str | os.PathLike, *, limit: int | None = None,
                   levels: Sequence[str] | None = None) -> list[ToolTask]:
    """Tasks of a built directory as ``ToolTask`` (module docstring); ``levels`` filters them."""
    spec, built, manifest = read_env_dir(path)
    docs = tool_documents(spec)
    spec_path = str((Path(path) / "spec.yaml").resolve())
    out: list[ToolTask] = []
    for t in built:
        if levels is not None and t.level not in levels:
            continue
        if limit is not None and len(out) >= limit:
            break
        tools = [copy.deepcopy(docs[n]) for n in t.tools]
        first = t.turns[0]
        if "calls" in first:
            calls = [{"name": c["name"], "arguments": dict(c["arguments"])} for c in first["calls"]]
            gt = render_toolrl_output(calls, think=_think(calls))
        else:
            calls = []
            gt = render_toolrl_output(response=first["response"],
                                      think="Some information is missing, so I ask the user.")
        meta = {
            "source": "envgen", "domain": spec.domain, "level": t.level, "query": t.query,
            "subgoals": [g.to_dict() for g in t.subgoals], "guards": [g.to_dict() for g in t.guards],
            "ground_truth_turns": [dict(turn) for turn in t.turns], "ground_truth_known": True,
            "env": {"spec_path": spec_path, "spec_sha256": spec.sha256, "world_seed": t.world_seed,
                    "noise": t.noise, "noise_seed": t.noise_seed, "tools": list(t.tools)},
            "env_dir": str(Path(path).resolve()), "num_turns": len(t.turns),
        }
        out.append(ToolTask(
            id=t.id,
            messages=[{"role": "system", "content": toolrl_system_prompt(tools)},
                      {"role": "user", "content": dialogue_history([("user", t.query)])}],
            tools=tools, ground_truth=gt, ground_truth_calls=calls, meta=meta))
    return out


@functools.lru_cache(maxsize=32)
def _spec(path: str, sha: str) -> DomainSpec:
    spec = load_spec(path)
    if sha and spec.sha256 != sha:
        raise DataError(f"{path} changed since the tasks were built; rebuild the directory")
    return spec


def _env_meta(task: ToolTask) -> dict:
    env = task.meta.get("env") if isinstance(task.meta, dict) else None
    if not isinstance(env, dict) or "spec_path" not in env:
        raise DataError(f"task {task.id!r} has no envgen meta; load it with envgen.load_env_tasks(DIR)")
    return env


def env_for_tasks(tasks: Sequence[ToolTask]) -> EnvgenEnvironment:
    """The ``ToolEnvironment`` for these tasks: ``ToolExecutor(environment=env_for_tasks(tasks))``;
    ``RolloutRequest(task=task)`` makes each trajectory start from its task's world."""
    specs = {}
    for t in tasks:
        env = _env_meta(t)
        specs[env["spec_path"]] = _spec(env["spec_path"], env.get("spec_sha256", ""))
    return EnvgenEnvironment(specs)


def _turn_from_text(text: str, syntax: str, executed: bool) -> TurnInput:
    parsed = parse_completion(text, syntax)
    if not parsed.has_tool_call:
        return TurnInput(text=text)
    if not parsed.ok:
        return TurnInput(text=text, failed_calls=1)
    calls = tuple(ToolCall(c.name, dict(c.arguments)) for c in parsed.tool_calls)
    return TurnInput(calls=calls, text=text) if executed else TurnInput(text=text, failed_calls=len(calls))


def text_turns(texts: Sequence[str], syntax: str = "toolrl") -> list[TurnInput]:
    """Replay inputs from assistant turn texts (every turn's calls run, in order)."""
    return [_turn_from_text(t, syntax, executed=True) for t in texts]


def trajectory_turns(trajectory: Any, row: int, tokenizer: Any, syntax: str = "toolrl") -> list[TurnInput]:
    """Replay inputs from row ``row`` of a rollout ``Trajectory``: the calls the engine logged per
    turn (parse errors count as failed calls); a turn with a tool call the engine did not run (it
    hit ``max_turns`` or the length limit) counts its calls as failed, not as a text answer."""
    logged = trajectory.tool_calls[row]
    out = []
    for turn in range(int(trajectory.num_turns[row])):
        text = tokenizer.decode(trajectory.turn_ids(row, turn).tolist(), skip_special_tokens=True)
        mine = [c for c in logged if c.get("turn") == turn]
        if not mine:
            out.append(_turn_from_text(text, syntax, executed=False))
            continue
        calls = tuple(ToolCall(c["name"], dict(c["arguments"] or {})) for c in mine if c.get("name") is not None)
        out.append(TurnInput(calls=calls, text=text, failed_calls=sum(c.get("name") is None for c in mine)))
    return out


def score_task(task: ToolTask, turns: Sequence[TurnInput]) -> EpisodeScore:
    """Replays ``turns`` on the task's fresh world: per-turn FTRL rewards, sub-goals, success."""
    env = _env_meta(task)
    spec = _spec(env["spec_path"], env.get("spec_sha256", ""))
    world = make_world(spec, env["world_seed"], noise=env.get("noise", 0.0), noise_seed=env.get("noise_seed", 0),
                       allowed=env.get("tools"))
    return score_episode(world, turns, [SubGoal.from_dict(g) for g in task.meta["subgoals"]],
                         [Guard.from_dict(g) for g in task.meta.get("guards", [])])


def ftrl_turn_rewards_for(task: ToolTask, turns: Sequence[TurnInput]) -> list[float]:
    """Per-turn FTRL rewards of an episode of ``task`` (``score_task(...).turn_rewards``)."""
    return list(score_task(task, turns).turn_rewards)
