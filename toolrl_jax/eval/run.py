"""One entry point for the ``eval`` command: benchmark name + predict_fn -> results (+ table, JSON).

    results = run_benchmark("bfcl", predict_fn, categories=["simple", "multiple"], limit=50)
    results = run_benchmark("apibank", predict_fn, data=["level-1-api_processed.json", ...])
    results = run_benchmark("toolrl", predict_fn, data="rlla_test.parquet")
    results = run_benchmark("generated", predict_fn, limit=100, seed=1)   # no external data
    report_and_save(results, model_name="my-model", output="results.json")
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Callable, Sequence

from toolrl_jax.data.generated import generate_tasks
from toolrl_jax.data.toolrl import load_toolrl
from toolrl_jax.errors import DataError
from toolrl_jax.eval.apibank import evaluate_apibank
from toolrl_jax.eval.bfcl import DEFAULT_CATEGORIES, PredictFn, evaluate_bfcl
from toolrl_jax.eval.report import print_report
from toolrl_jax.eval.toolrl import evaluate_toolrl

BENCHMARKS = ("bfcl", "apibank", "toolrl", "generated")


def run_benchmark(
    benchmark: str,
    predict_fn: PredictFn,
    *,
    categories: str | Sequence[str] | None = None,
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    limit: int | None = None,
    prompt_style: str = "toolrl",
    syntax: str = "auto",
    batch_size: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Runs one benchmark (``bfcl``, ``apibank``, ``toolrl`` or ``generated``) on ``predict_fn``.

    ``data`` is required for apibank (one or more files in ToolRL's processed format) and
    toolrl (a verl parquet or raw JSON file); BFCL reads the installed bfcl-eval package;
    ``generated`` draws ``limit`` (default 100) tasks of stream ``seed`` (``prompt_style``
    ``toolrl`` or ``compact``).
    """
    if benchmark == "bfcl":
        return evaluate_bfcl(
            predict_fn, categories or DEFAULT_CATEGORIES, limit, prompt_style=prompt_style,
            syntax=syntax, batch_size=batch_size, progress=progress,
        )
    if benchmark == "apibank":
        if not data:
            raise DataError("--benchmark apibank needs --data PATH (API-Bank JSON in ToolRL's processed format)")
        return evaluate_apibank(predict_fn, data, limit, syntax=syntax, batch_size=batch_size, progress=progress)
    if benchmark == "toolrl":
        if not data:
            raise DataError("--benchmark toolrl needs --data PATH (ToolRL verl parquet or raw JSON)")
        paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        tasks = []
        for p in paths:
            tasks.extend(load_toolrl(p, limit=limit).tasks)
        result = evaluate_toolrl(predict_fn, tasks, syntax=syntax, batch_size=batch_size, progress=progress)
        result["files"] = [str(p) for p in paths]
        return result
    if benchmark == "generated":
        tasks = generate_tasks(limit or 100, seed=seed, prompt_style=prompt_style if prompt_style != "json_schema" else "toolrl")
        result = evaluate_toolrl(predict_fn, tasks, syntax=syntax, batch_size=batch_size, progress=progress)
        result["seed"] = seed
        return result
    close = difflib.get_close_matches(benchmark, BENCHMARKS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(f"unknown benchmark '{benchmark}'{hint}; use one of {', '.join(BENCHMARKS)}")


def report_and_save(results: dict[str, Any], model_name: str = "model", output: str | os.PathLike | None = None) -> str:
    """Prints the ToolRL-layout table; writes the JSON results (with per-entry details) to ``output``."""
    return print_report(results, model_name, output=output)
