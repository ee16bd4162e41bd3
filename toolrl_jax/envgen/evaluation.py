"""Evaluation on a built FTRL environment directory (``toolrl-jax eval --benchmark envs --data DIR``).

Each task is played as a multi-turn episode (the model's calls run on the task's own world, the
results come back as ToolRL ``<obs>``), then replayed and scored (``envgen.training.score_task``):

    success rate        tasks whose sub-goals are all reached (record sub-goals on the final state)
                        and whose guards hold
    sub-goal completion reached sub-goals / all sub-goals
    mean turn reward    FTRL per-turn reward averaged over turns, then over tasks

per complexity level and overall. ``evaluate_envs`` takes any ``episodes_fn(tasks) ->
[[TurnInput]]``: the rollout engine (:func:`engine_episodes_fn`), or scripted turn texts
(:func:`texts_episodes_fn`) for tests and offline completions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from toolrl_jax.data.task import ToolTask
from toolrl_jax.envgen.builder import LEVELS
from toolrl_jax.envgen.episode import EpisodeScore, TurnInput
from toolrl_jax.envgen.training import env_for_tasks, load_env_tasks, score_task, text_turns, trajectory_turns
from toolrl_jax.errors import DataError
from toolrl_jax.eval.report import write_json
from toolrl_jax.rollout.engine import RolloutConfig, RolloutEngine, RolloutRequest
from toolrl_jax.rollout.sampling import SamplingConfig
from toolrl_jax.rollout.turns import Environment, tool_call_extractor
from toolrl_jax.tools.executor import ToolExecutor

__all__ = ["engine_episodes_fn", "evaluate_envs", "format_envs_table", "run_envs_eval", "summarize_env_scores",
           "texts_episodes_fn"]

EpisodesFn = Callable[[Sequence[ToolTask]], Sequence[Sequence[TurnInput]]]


def summarize_env_scores(tasks: Sequence[ToolTask], scores: Sequence[EpisodeScore]) -> dict[str, Any]:
    """Per-level and overall success rate, sub-goal completion and mean per-turn reward."""
    groups: dict[str, list[tuple[ToolTask, EpisodeScore]]] = {}
    for t, s in zip(tasks, scores):
        groups.setdefault(t.meta.get("level", "?"), []).append((t, s))
    order = [lv for lv in LEVELS if lv in groups] + sorted(lv for lv in groups if lv not in LEVELS)

    def stats(items):
        goals = sum(len(s.solved) for _, s in items)
        turn_means = [sum(s.turn_rewards) / len(s.turn_rewards) if s.turn_rewards else 0.0 for _, s in items]
        return {"tasks": len(items),
                "success_rate": sum(s.success for _, s in items) / len(items) if items else 0.0,
                "subgoal_completion": sum(sum(s.solved) for _, s in items) / goals if goals else 0.0,
                "mean_turn_reward": sum(turn_means) / len(turn_means) if turn_means else 0.0}

    everything = [x for lv in order for x in groups[lv]]
    return {"benchmark": "envs", "per_level": {lv: stats(groups[lv]) for lv in order},
            "overall": stats(everything),
            "entries": [{"id": t.id, "level": t.meta.get("level"), "success": s.success,
                         "solved": list(s.solved), "turn_rewards": list(s.turn_rewards)} for t, s in everything]}


def evaluate_envs(data: str | os.PathLike | Sequence[ToolTask], episodes_fn: EpisodesFn, *,
                  limit: int | None = None, levels: Sequence[str] | None = None, batch_size: int = 16,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Plays every task (a built directory, or ``load_env_tasks`` output) through ``episodes_fn``
    in batches and summarizes (:func:`summarize_env_scores`)."""
    tasks = load_env_tasks(data, limit=limit, levels=levels) if isinstance(data, (str, os.PathLike)) else list(data)
    if not tasks:
        raise DataError(f"no envgen tasks to evaluate in {data!r} (check --data and --limit)")
    scores: list[EpisodeScore] = []
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start:start + batch_size]
        episodes = episodes_fn(batch)
        scores.extend(score_task(t, turns) for t, turns in zip(batch, episodes))
        if progress is not None:
            progress(len(scores), len(tasks))
    result = summarize_env_scores(tasks, scores)
    if isinstance(data, (str, os.PathLike)):
        result["data"] = str(data)
    return result


def texts_episodes_fn(turn_texts: Mapping[str, Sequence[str]], syntax: str = "toolrl") -> EpisodesFn:
    """Episodes from fixed assistant turn texts by task id (missing ids: no turns)."""
    return lambda tasks: [text_turns(turn_texts.get(t.id, ()), syntax) for t in tasks]


def _run_engine(model, tokenizer, template, env, prompts, tasks, *, num_slots, max_new_tokens,
                max_turns, max_total_len):
    """One multi-turn greedy rollout over the environment (the only place that builds the engine)."""
    cfg = RolloutConfig(num_slots=num_slots, max_new_tokens=max_new_tokens, max_total_len=max_total_len,
                        max_turns=max_turns, sampling=SamplingConfig(temperature=0.0))
    with ToolExecutor(environment=env) as executor:
        environment = Environment(executor=executor, extract_calls=tool_call_extractor("toolrl"),
                                  observation_format="toolrl")
        engine = RolloutEngine(model, cfg, tokenizer=tokenizer, template=template,
                               environment=environment)
        return engine.run([RolloutRequest(prompt_ids=p, task=t) for p, t in zip(prompts, tasks)])


def engine_episodes_fn(model, tokenizer, template, *, max_turns: int = 4, max_new_tokens: int = 256,
                       num_slots: int = 8, max_obs_tokens: int = 512) -> EpisodesFn:
    """``episodes_fn`` that plays the tasks with the rollout engine (greedy, ToolRL format)."""

    def episodes(tasks: Sequence[ToolTask]) -> list[list[TurnInput]]:
        env = env_for_tasks(tasks)
        prompts = [template.render_prompt(tokenizer, t.messages, add_generation_prompt=True) for t in tasks]
        budget = max(len(p) for p in prompts) + max_turns * (max_new_tokens + max_obs_tokens + 64)
        traj = _run_engine(model, tokenizer, template, env, prompts, tasks, num_slots=num_slots,
                           max_new_tokens=max_new_tokens, max_turns=max_turns,
                           max_total_len=1 << (budget - 1).bit_length())
        return [trajectory_turns(traj, i, tokenizer) for i in range(len(tasks))]

    return episodes


def format_envs_table(results: Mapping[str, Any]) -> str:
    rows = [("level", "tasks", "success", "sub-goals", "turn reward")]
    for level, r in [*results["per_level"].items(), ("overall", results["overall"])]:
        rows.append((level, str(r["tasks"]), f"{100 * r['success_rate']:.1f}%",
                     f"{100 * r['subgoal_completion']:.1f}%", f"{r['mean_turn_reward']:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def run_envs_eval(args, model, tokenizer, template, progress=None) -> int:
    """The ``eval --benchmark envs`` command body (``args``: the eval command's arguments)."""
    if not args.data or len(args.data) != 1:
        raise DataError("--benchmark envs needs --data DIR (one directory written by 'toolrl-jax envs build')")
    fn = engine_episodes_fn(model, tokenizer, template, max_turns=getattr(args, "max_turns", 4),
                            max_new_tokens=args.max_new_tokens, num_slots=args.batch_size)
    results = evaluate_envs(args.data[0], fn, limit=args.limit, batch_size=max(args.batch_size * 4, 16),
                            progress=progress)
    print(format_envs_table(results))
    if args.output:
        write_json({"model": str(args.model), **results}, args.output)
    return 0
