"""API-Bank evaluation in ToolRL's setting (arXiv 2504.13958, Sec. 4 / Table 3).

Each case gives the candidate APIs in ToolRL's system prompt and the dialogue so far, and asks
for one call. A case is correct when some predicted call matches the expected call exactly:
same name and the same parameters dict (Python ``==`` on the decoded JSON values, so the string
``"12345"`` does not equal the number ``12345``; ``equality="lenient"`` compares values as
stripped strings instead). With several expected calls, each must be matched by a distinct
predicted call. Extra predicted calls are not penalised ("any predicted call").

Accuracy is reported per level (read from the file name, ``level-N-...``) and overall, where
Overall is the fraction of all cases that are correct (levels weighted by their case counts).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

from toolrl_jax.data.apibank import load_apibank
from toolrl_jax.data.task import ToolTask
from toolrl_jax.errors import DataError
from toolrl_jax.eval.calls import parse_calls

PredictFn = Callable[[Sequence[ToolTask]], Sequence[str]]


def _norm(value: Any, equality: str) -> Any:
    if equality == "strict":
        return value
    if isinstance(value, dict):
        return {str(k): _norm(v, equality) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v, equality) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def calls_match(expected: Sequence[Mapping[str, Any]], predicted: Sequence[Mapping[str, Any]], equality: str = "strict") -> bool:
    """True when every expected call equals a distinct predicted call (name and parameters)."""
    used: set[int] = set()
    for e in expected:
        want = (e["name"], _norm(dict(e["arguments"]), equality))
        for j, p in enumerate(predicted):
            if j in used:
                continue
            if (p["name"], _norm(dict(p["arguments"]), equality)) == want:
                used.add(j)
                break
        else:
            return False
    return True


def score_apibank(task: ToolTask, completion: str, *, syntax: str = "auto", equality: str = "strict") -> dict[str, Any]:
    """``{"valid": bool, "error_type": None | "no_call" | "decode_failed" | "wrong_call"}``."""
    calls = parse_calls(completion, syntax)
    if calls is None:
        return {"valid": False, "error_type": "decode_failed"}
    if not calls:
        return {"valid": False, "error_type": "no_call"}
    ok = calls_match(task.ground_truth_calls, calls, equality)
    return {"valid": ok, "error_type": None if ok else "wrong_call"}


def evaluate_apibank_tasks(
    predict_fn: PredictFn,
    tasks: Sequence[ToolTask],
    *,
    batch_size: int = 16,
    syntax: str = "auto",
    equality: str = "strict",
    keep_outputs: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Scores ``predict_fn`` on API-Bank tasks (``data.apibank.load_apibank``); see module docstring."""
    entries = []
    for i in range(0, len(tasks), batch_size):
        chunk = list(tasks[i : i + batch_size])
        outs = list(predict_fn(chunk))
        if len(outs) != len(chunk):
            raise ValueError(f"predict_fn returned {len(outs)} texts for {len(chunk)} tasks")
        for task, text in zip(chunk, outs):
            text = text if isinstance(text, str) else ""
            e = {"id": task.id, "level": task.meta.get("level"), **score_apibank(task, text, syntax=syntax, equality=equality)}
            if keep_outputs:
                e["completion"] = text
            entries.append(e)
        if progress is not None:
            progress(min(i + batch_size, len(tasks)), len(tasks))
    by_level: dict[Any, list[bool]] = defaultdict(list)
    for e in entries:
        by_level[e["level"]].append(e["valid"])
    levels = {}
    for lvl in sorted(by_level, key=lambda x: (x is None, x)):
        vals = by_level[lvl]
        key = f"level-{lvl}" if lvl is not None else "level-unknown"
        levels[key] = {"accuracy": sum(vals) / len(vals), "correct": sum(vals), "total": len(vals)}
    n = len(entries)
    correct = sum(e["valid"] for e in entries)
    return {
        "benchmark": "apibank",
        "equality": equality,
        "levels": levels,
        "overall": {"accuracy": correct / n if n else 0.0, "correct": correct, "total": n},
        "entries": entries,
    }


def evaluate_apibank(
    predict_fn: PredictFn,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    limit: int | None = None,
    **kwargs,
) -> dict[str, Any]:
    """Loads API-Bank file(s) in ToolRL's processed format and scores ``predict_fn`` per level.

    ``limit`` keeps the first N cases of each file. Skipped bad records are reported under
    ``"skipped"``. A file with no usable case (another benchmark's format) is a DataError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    tasks: list[ToolTask] = []
    skipped = {}
    for p in paths:
        loaded = load_apibank(p, limit=limit)
        if not loaded.tasks:  # another format (BFCL, ToolRL parquet as JSON, ...): not "Overall 0.00"
            raise DataError(f"{p}: no API-Bank case ({loaded.summary()}); --benchmark apibank "
                            "needs ToolRL's processed API-Bank JSON: a list of {system, user, "
                            "answer} records (e.g. level-1-api_processed.json)")
        tasks.extend(loaded.tasks)
        if loaded.skipped:
            skipped[str(p)] = dict(loaded.skip_reasons)
    result = evaluate_apibank_tasks(predict_fn, tasks, **kwargs)
    result["files"] = [str(p) for p in paths]
    result["skipped"] = skipped
    return result
