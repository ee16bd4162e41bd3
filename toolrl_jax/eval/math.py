"""Math evaluation with ReTool's metrics (Feng et al., arXiv 2504.11536).

    results = evaluate_math(generate_fn, load_math_tasks("aime24"), samples=4)

``generate_fn(tasks, sample) -> list[MathCompletion | str]`` answers every task once (``sample``
numbers the repeat, e.g. for the sampling seed); a completion is the response after the prompt:
the generated text with its ``<interpreter>`` blocks. Metrics over N tasks x K samples:

* ``pass@1`` = mean over tasks of (mean over the K samples of correct), correct = ReTool's
  outcome reward is +1 (``rewards.math.retool_reward``: last ``\\boxed{}`` math-verify-equivalent
  to the answer);
* ``code_use`` = share of answers with at least one executed cell (``<interpreter>`` block);
* ``code_calls`` = executed cells per answer;
* ``code_pass_rate`` = cells without an error status / all cells (None when no cell ran);
* ``response_tokens`` = mean tokens after the prompt (generated + interpreter; None if the
  completions carry no counts), ``response_chars`` = mean characters.

:func:`make_math_generate_fn` builds ``generate_fn`` from a model with the multi-turn rollout
engine and the code interpreter (``tools.code_interpreter``); :func:`format_math_table` prints
the one-row-per-model table.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

try:  # imported here, in the main thread: a first import inside a verifier thread can take
    import math_verify  # noqa: F401  longer than the per-answer timeout and score -1
except ImportError:  # retool_reward reports the missing dependency
    math_verify = None

from toolrl_jax.data.math import generate_math_tasks, load_math_tasks
from toolrl_jax.data.task import ToolTask
from toolrl_jax.errors import DataError
from toolrl_jax.eval.report import write_json
from toolrl_jax.rewards.code_use import cell_counts
from toolrl_jax.rewards.math import MathVerifier, extract_boxed, retool_reward
from toolrl_jax.rollout.engine import RolloutConfig, RolloutEngine, RolloutRequest
from toolrl_jax.rollout.turns import Environment, code_extractor
from toolrl_jax.rollout.sampling import SamplingConfig
from toolrl_jax.tools.code_interpreter import CodeInterpreterEnvironment, code_interpreter_environment
from toolrl_jax.tools.executor import ToolExecutor

__all__ = [
    "MathCompletion",
    "code_use_metrics",
    "evaluate_math",
    "format_math_table",
    "make_math_generate_fn",
    "math_eval_tasks",
    "print_math_report",
]


@dataclasses.dataclass(frozen=True)
class MathCompletion:
    """One response: ``text`` after the prompt (generated + interpreter blocks) and its token
    count (None if unknown)."""

    text: str
    response_tokens: int | None = None


GenerateFn = Callable[[Sequence[ToolTask], int], Sequence["MathCompletion | str"]]


def _mean(xs) -> float | None:
    xs = list(xs)
    return float(np.mean(xs)) if xs else None


def evaluate_math(generate_fn: GenerateFn, tasks: Sequence[ToolTask], samples: int = 1, *,
                  verifier: MathVerifier | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Runs ``generate_fn`` ``samples`` times over ``tasks`` and scores (see module docstring)."""
    if samples < 1:
        raise DataError(f"--samples must be >= 1, got {samples}")
    tasks = list(tasks)
    golds = [str(t.ground_truth) for t in tasks]
    runs: list[list[MathCompletion]] = []
    for k in range(samples):
        out = list(generate_fn(tasks, k))
        if len(out) != len(tasks):
            raise ValueError(f"generate_fn returned {len(out)} completions for {len(tasks)} tasks")
        runs.append([c if isinstance(c, MathCompletion) else MathCompletion(str(c)) for c in out])
        if progress is not None:
            progress(k + 1, samples)
    texts = [c.text for run in runs for c in run]  # sample-major, [K * N]
    reward = retool_reward(texts, golds * samples, verifier=verifier)
    correct = (reward > 0).reshape(samples, len(tasks))
    counts = cell_counts(texts)
    cells, failed = counts.cells, counts.failed
    lengths = [c.response_tokens for run in runs for c in run]
    summary = {"pass@1": _mean(correct.mean(axis=0)),
               **code_use_metrics(texts, lengths if all(n is not None for n in lengths) else None)}
    entries = []
    for i, task in enumerate(tasks):
        entries.append({"id": task.id, "answer": golds[i], "pass@1": float(correct[:, i].mean()),
                        "samples": [{"text": runs[k][i].text, "boxed": extract_boxed(runs[k][i].text),
                                     "correct": bool(correct[k, i]),
                                     "cells": int(cells[k * len(tasks) + i]),
                                     "failed_cells": int(failed[k * len(tasks) + i])}
                                    for k in range(samples)]})
    return {"benchmark": "math", "tasks": len(tasks), "samples": samples, **summary,
            "entries": entries}


def code_use_metrics(texts: Sequence[str], response_tokens: Sequence[int] | None = None
                     ) -> dict[str, float | None]:
    """ReTool's behaviour metrics of a batch of responses (also for per-step training logs):
    ``code_use``, ``code_calls``, ``code_pass_rate`` (None without cells), ``response_tokens``
    (None when not given), ``response_chars``."""
    counts = cell_counts(texts)
    cells, failed = counts.cells, counts.failed
    return {
        "code_use": _mean(cells >= 1),
        "code_calls": _mean(cells),
        "code_pass_rate": float(1.0 - failed.sum() / cells.sum()) if cells.sum() else None,
        "response_tokens": _mean(response_tokens) if response_tokens is not None else None,
        "response_chars": _mean(len(t) for t in texts),
    }


# --------------------------------------------------------------------------- model -> generate_fn
def _math_engine(model, tokenizer, template, executor: ToolExecutor, *, batch_size: int,
                 max_new_tokens: int, max_total_len: int, max_turns: int, max_obs_tokens: int,
                 temperature: float, seed: int) -> RolloutEngine:
    """The multi-turn ReTool engine: stop at ``</code>``, run the cell, ``<interpreter>`` inline."""
    config = RolloutConfig(
        num_slots=batch_size, max_new_tokens=max_new_tokens, max_total_len=max_total_len,
        max_turns=max_turns, max_obs_tokens=max_obs_tokens,
        sampling=SamplingConfig(temperature=temperature), seed=seed)
    environment = Environment(executor=executor, extract_calls=code_extractor(_tool_name(executor)),
                              observation_format="interpreter", tool_stop_strings=("</code>",))
    return RolloutEngine(model, config, tokenizer=tokenizer, template=template,
                         environment=environment)


def _tool_name(executor: ToolExecutor) -> str:
    names = list(executor.tools)
    return names[0] if len(names) == 1 else "python"


def make_math_generate_fn(model, tokenizer, template, *,
                          environment: CodeInterpreterEnvironment | None = None,
                          max_new_tokens: int = 1024, max_turns: int = 4, batch_size: int = 16,
                          temperature: float = 0.0, seed: int = 0,
                          max_prompt_tokens: int = 4096) -> GenerateFn:
    """``generate_fn(tasks, sample)`` answering with the code interpreter (stateless, 5 s,
    512 MB, 512 characters unless ``environment`` is given); sample k uses seed ``seed + k``.
    A trajectory holds the prompt, ``max_turns`` turns and ``max_turns - 1`` interpreter blocks
    (the KV cache is sized for that). Prompts over ``max_prompt_tokens`` get an empty answer."""
    env = environment or code_interpreter_environment(stateful=False, timeout_s=5.0, memory_mb=512,
                                                      max_output_chars=512)
    obs_tokens = env.limits.max_output_chars + 64  # ASCII: tokens <= characters
    executor = ToolExecutor(environment=env, timeout_s=env.executor_timeout_s(max_turns),
                            max_observation_chars=env.limits.max_output_chars + 256,
                            max_workers=min(8, batch_size))
    engines: dict[int, RolloutEngine] = {}

    def generate(tasks: Sequence[ToolTask], sample: int) -> list[MathCompletion]:
        prompts = [template.render_prompt(tokenizer, t.messages, add_generation_prompt=True)
                   for t in tasks]
        out = [MathCompletion("", 0) for _ in tasks]
        ok = [i for i, p in enumerate(prompts) if len(p) <= max_prompt_tokens]
        if len(ok) < len(prompts):
            print(f"eval: {len(prompts) - len(ok)} prompts over max_prompt_tokens="
                  f"{max_prompt_tokens} answered with an empty string", file=sys.stderr)
        if not ok:
            return out
        total = (max(len(prompts[i]) for i in ok) + max_turns * max_new_tokens
                 + (max_turns - 1) * (obs_tokens + 16))
        size = max(256, 1 << (total - 1).bit_length())
        if size not in engines:
            engines[size] = _math_engine(model, tokenizer, template, executor,
                                         batch_size=batch_size, max_new_tokens=max_new_tokens,
                                         max_total_len=size, max_turns=max_turns,
                                         max_obs_tokens=obs_tokens, temperature=temperature,
                                         seed=seed)
        traj = engines[size].run([RolloutRequest(prompt_ids=prompts[i], task=tasks[i]) for i in ok],
                                 seed=seed + sample)
        for row, i in enumerate(ok):
            out[i] = MathCompletion(traj.completion_text(row, tokenizer, skip_special_tokens=True),
                                    int(traj.lengths[row] - traj.prompt_lengths[row]))
        return out

    return generate


def math_eval_tasks(data: str | None, limit: int | None = None, *, seed: int = 1_000_003
                    ) -> list[ToolTask]:
    """``--data`` of ``--benchmark math``: a file, ``aime24`` / ``aime25`` / ``math500``, or
    ``generated`` (``limit`` generated problems, default 50, of stream ``seed``)."""
    if not data:
        raise DataError("--benchmark math needs --data PATH|aime24|aime25|math500|generated")
    if str(data) == "generated":
        return generate_math_tasks(limit or 50, seed=seed)
    return load_math_tasks(data, limit=limit)


# --------------------------------------------------------------------------- report
def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100.0 * x:.2f}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_math_table(results_by_model: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per model: Tasks | Samples | pass@1 % | Code use % | Calls/answer |
    Code pass % | Response tokens."""
    header = ["Model", "Tasks", "Samples", "pass@1", "Code use", "Calls/answer", "Code pass",
              "Resp. tokens"]
    rows = [[name, str(r["tasks"]), str(r["samples"]), _pct(r["pass@1"]), _pct(r["code_use"]),
             _num(r["code_calls"]), _pct(r["code_pass_rate"]),
             _num(r["response_tokens"]) if r["response_tokens"] is not None
             else _num(r["response_chars"]) + " ch"]
            for name, r in results_by_model.items()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|"
    return ("Math with a code interpreter (ReTool metrics; %, calls and tokens per answer)\n"
            + "\n".join([line(header), sep] + [line(r) for r in rows]))


def print_math_report(results: Mapping[str, Any], model_name: str = "model", *,
                      output: str | None = None, file: TextIO | None = None) -> str:
    """Prints the table; writes the JSON results (with every sample's text) to ``output``."""
    text = format_math_table({model_name: results})
    print(text, file=file or sys.stdout)
    if output is not None:
        write_json({"model": model_name, **results}, output)
    return text
