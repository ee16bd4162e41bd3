"""Evaluation on ToolRL-format tasks (the ``rlla_test.parquet`` split, SFT400, generated tasks).

Two scores per task:

* exact match: for a ground truth with ``<tool_call>``, the predicted calls decode and equal the
  ground-truth calls as a multiset (same names, same ``parameters`` dicts under Python ``==``;
  order free, as ToolRL's correctness gives full marks to a reordered set). For a response-only
  ground truth, the prediction makes no call and has a ``<response>``.
* the ToolRL reward (format + correctness, docs/methods.md section 1) and its components, computed by
  ``toolrl_jax.rewards`` (the training reward itself) when that package provides a host scorer;
  otherwise the results say ``"reward": null``.

``evaluate_toolrl(predict_fn, tasks)`` returns accuracy, mean reward / components, and one entry
per task.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping, Sequence

from toolrl_jax.data.task import ToolTask, has_response
from toolrl_jax.errors import ToolRLError
from toolrl_jax.eval.calls import parse_calls
from toolrl_jax.rewards.toolrl import score_texts

PredictFn = Callable[[Sequence[ToolTask]], Sequence[str]]
RewardFn = Callable[[Sequence[str], Sequence[str]], Mapping[str, Sequence[float]]]


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return ("__dict__", tuple(sorted((str(k), _freeze(x)) for k, x in v.items())))
    if isinstance(v, (list, tuple)):
        return ("__list__", tuple(_freeze(x) for x in v))
    return v  # scalars hash like they compare (hash(1) == hash(1.0) == hash(True))


def _call_key(c: Mapping[str, Any]) -> Any:
    return (c["name"], _freeze(dict(c["arguments"])))


def exact_match(task: ToolTask, completion: str, syntax: str = "auto") -> bool:
    """ToolRL-test exact match (see module docstring)."""
    calls = parse_calls(completion, syntax)
    if not task.ground_truth_calls:
        return calls == [] and has_response(completion or "")
    if not calls:
        return False
    return Counter(_call_key(c) for c in calls) == Counter(_call_key(c) for c in task.ground_truth_calls)


def default_reward_fn(config: Any = None) -> RewardFn | None:
    """The training reward as ``(completions, ground_truths) -> {"reward", "format", "correctness", "length"}``.

    Uses ``toolrl_jax.rewards.toolrl.score_texts`` (host encoding + the jitted scorer) with
    ``config`` (a ``ToolRLRewardConfig``; default: the training default).
    """

    def reward_fn(completions: Sequence[str], ground_truths: Sequence[str]) -> dict[str, Any]:
        out = score_texts(list(completions), list(ground_truths), 0, config)
        return {"reward": out["total"], **{k: out[k] for k in ("format", "correctness", "length") if k in out}}

    return reward_fn


def evaluate_toolrl(
    predict_fn: PredictFn,
    tasks: Sequence[ToolTask],
    *,
    batch_size: int = 16,
    syntax: str = "auto",
    reward_fn: RewardFn | None | str = "default",
    keep_outputs: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Exact match and ToolRL reward of ``predict_fn`` on ToolRL-format tasks.

    Args:
      predict_fn: batch of ToolTask -> one completion text each.
      tasks: e.g. ``data.toolrl.load_toolrl(path)`` or ``data.generated.generate_tasks(...)``.
      reward_fn: ``(completions, ground_truths) -> {"reward": [B], "format": [B],
        "correctness": [B], ...}``; "default" uses ``toolrl_jax.rewards``; None skips rewards.
    """
    if isinstance(reward_fn, str):
        if reward_fn != "default":
            raise ValueError(f"reward_fn must be a callable, None or 'default', got {reward_fn!r}")
        reward_fn = default_reward_fn()
    entries: list[dict[str, Any]] = []
    completions: list[str] = []
    for i in range(0, len(tasks), batch_size):
        chunk = list(tasks[i : i + batch_size])
        outs = list(predict_fn(chunk))
        if len(outs) != len(chunk):
            raise ValueError(f"predict_fn returned {len(outs)} texts for {len(chunk)} tasks")
        for task, text in zip(chunk, outs):
            text = text if isinstance(text, str) else ""
            completions.append(text)
            e: dict[str, Any] = {"id": task.id, "exact_match": exact_match(task, text, syntax)}
            if keep_outputs:
                e["completion"] = text
            entries.append(e)
        if progress is not None:
            progress(min(i + batch_size, len(tasks)), len(tasks))
    n = len(entries)
    result: dict[str, Any] = {
        "benchmark": "toolrl",
        "total": n,
        "exact_match": sum(e["exact_match"] for e in entries) / n if n else 0.0,
        "reward": None,
        "entries": entries,
    }
    if reward_fn is not None and n:
        try:
            scores = reward_fn(completions, [t.ground_truth for t in tasks])
        except ToolRLError as e:  # e.g. a ground truth with more calls than the reward's static shape
            result["reward_error"] = str(e)
            return result
        means = {}
        for key, values in scores.items():
            vals = [float(v) for v in list(values)]
            if len(vals) != n:
                continue
            means[key] = sum(vals) / n
            for e, v in zip(entries, vals):
                e[key] = v
        result["reward"] = means
    return result
