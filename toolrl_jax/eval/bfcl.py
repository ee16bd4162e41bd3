"""BFCL v4 evaluation with bfcl-eval's own checkers, for any text-in/text-out model.

``evaluate_bfcl(predict_fn, categories, limit)`` loads the categories (``toolrl_jax.data.bfcl``),
asks ``predict_fn`` (a batch of :class:`ToolTask` -> one completion text each) for answers,
decodes the calls in each completion (``toolrl_jax.eval.calls``: ToolRL ``<tool_call>`` JSON
lines or BFCL's Python call syntax) into BFCL's decoded format ``[{func: {arg: value}}]`` and
scores them:

* AST categories (simple_*, multiple, parallel, parallel_multiple, live_*): bfcl-eval's
  ``ast_checker`` (``bfcl_eval/eval_checker/ast_eval/ast_checker.py``), called exactly as its
  ``eval_runner`` calls it: the entry's un-hinted function docs, the decoded output, the possible
  answers, the language (Python / Java / JavaScript) and the category. An undecodable output is
  invalid (BFCL's ``ast_decoder:decoder_failed``).
* relevance / irrelevance: BFCL's rule from ``_evaluate_single_relevance_entry``: an output
  "contains a call" when it decodes to a non-empty call list; irrelevance entries pass without
  one, live_relevance entries pass with one.
* multi-turn: BFCL's prompting loop (``BaseHandler.inference_multi_turn_prompting``): per turn,
  the model is asked repeatedly; decoded calls run on bfcl-eval's Python backends
  (``execute_multi_turn_func_call``) and their results are shown back (``<obs>`` in ToolRL
  style, ``tool`` messages otherwise) until it answers without a call (or 20 steps); held-out
  functions (miss_func) are added at their turn with BFCL's message. The per-turn decoded calls
  then go to bfcl-eval's ``multi_turn_checker`` (state and response checks against the ground
  truth's execution).

Importing the checker: ``ast_checker`` imports ``bfcl_eval.constants.model_config``, which
imports every API client. A stub module is put in ``sys.modules`` under that name with a
``MODEL_CONFIG_MAPPING`` whose every entry has ``underscore_to_dot = False`` (the only field
the checker reads: function names keep their dots). Nothing else of bfcl-eval is stubbed; the
multi-turn checker needs ``mpmath`` for its MathAPI backend.

Scores summarise as BFCL does (``eval_runner_helper.generate_leaderboard_csv``): non-live
simple = unweighted mean of simple_python/java/javascript; Non-Live AST = unweighted mean of
simple, multiple, parallel, parallel_multiple; Live = count-weighted mean of the four live AST
categories; Multi-Turn = unweighted mean of its four categories; Irrelevance = unweighted mean
of irrelevance and live_irrelevance; Relevance = live_relevance; Overall = unweighted mean of
Non-Live, Live and Multi-Turn (BFCL v3's overall, the one ToolRL reports), over the groups that
were evaluated (``summary["overall_groups"]`` lists them; BFCL itself would count a missing
group as 0).
"""

from __future__ import annotations

import copy
import json
import re
import sys
import types
import uuid
from typing import Any, Callable, Mapping, Sequence

from toolrl_jax.data.bfcl import (
    LIVE_AST,
    MULTI_TURN,
    expand_categories,
    load_bfcl,
    question_turns,
    to_json_schema,
    add_language_hints,
    toolrl_messages,
)
from toolrl_jax.data.task import ToolTask
from toolrl_jax.errors import DataError
from toolrl_jax.eval.calls import parse_calls

PredictFn = Callable[[Sequence[ToolTask]], Sequence[str]]

MODEL_NAME = "toolrl-jax"
DEFAULT_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple")
MAXIMUM_STEP_LIMIT = 20  # bfcl_eval.constants.default_prompts.MAXIMUM_STEP_LIMIT
ADDITIONAL_FUNCTION_PROMPT = "{functions}\nI have updated some more functions you can choose from. What about now?"
_IDENTIFIER_RE = re.compile(r"[A-Za-z_]\w*")


# ----------------------------------------------------------------------------------------------
# bfcl-eval imports
# ----------------------------------------------------------------------------------------------


class _StubModelConfig:
    """What ``ast_checker.convert_func_name`` reads from a model config."""

    underscore_to_dot = False
    is_fc_model = False


class _StubMapping(dict):
    def __missing__(self, key):
        return _StubModelConfig()


def _install_model_config_stub() -> None:
    name = "bfcl_eval.constants.model_config"
    if name in sys.modules:
        return  # the real module (or our stub) is already there
    stub = types.ModuleType(name)
    stub.__doc__ = "toolrl-jax stub: only MODEL_CONFIG_MAPPING[...].underscore_to_dot is read."
    stub.MODEL_CONFIG_MAPPING = _StubMapping()
    sys.modules[name] = stub


def bfcl_ast_checker():
    """(ast_checker, Language) from bfcl-eval, imported through the model_config stub."""
    _install_model_config_stub()
    try:  # lazy: optional dependency, importable only after the stub above
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    except ImportError as e:
        raise DataError(
            f"cannot import bfcl-eval's AST checker ({e}); install it with "
            "pip install --no-deps bfcl-eval==2026.3.23"
        ) from e
    return ast_checker, Language


def bfcl_multi_turn():
    """(multi_turn_checker, execute_multi_turn_func_call, multi_turn_utils module) from bfcl-eval."""
    _install_model_config_stub()
    try:  # lazy: optional dependencies, importable only after the stub above
        import mpmath  # noqa: F401  (MathAPI backend)
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker
    except ImportError as e:
        raise DataError(
            f"cannot import bfcl-eval's multi-turn checker ({e}); it needs mpmath: pip install mpmath"
        ) from e
    return multi_turn_checker, multi_turn_utils.execute_multi_turn_func_call, multi_turn_utils


# ----------------------------------------------------------------------------------------------
# single-turn scoring
# ----------------------------------------------------------------------------------------------


def decoded_for_bfcl(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, dict]]:
    """``[{"name", "arguments"}]`` -> BFCL's decoded format ``[{name: {arg: value}}]``."""
    return [{c["name"]: dict(c["arguments"])} for c in calls]


def score_ast(task: ToolTask, completion: str, syntax: str = "auto") -> dict[str, Any]:
    """Scores one AST-category completion with bfcl-eval's ``ast_checker``.

    Returns ``{"valid": bool, "error_type": str | None, "error": str | None}``.
    """
    ast_checker, Language = bfcl_ast_checker()
    category = task.meta["category"]
    calls = parse_calls(completion, syntax)
    if calls is None:
        return {"valid": False, "error_type": "ast_decoder:decoder_failed", "error": "cannot decode the calls"}
    language = {"python": Language.PYTHON, "java": Language.JAVA, "javascript": Language.JAVASCRIPT}[
        task.meta.get("language", "python")
    ]
    try:
        result = ast_checker(
            copy.deepcopy(task.meta["functions"]),
            decoded_for_bfcl(calls),
            copy.deepcopy(task.meta["possible_answer"]),
            language,
            category,
            MODEL_NAME,
        )
    except Exception as e:  # noqa: BLE001 - odd model output must not stop an evaluation
        return {"valid": False, "error_type": "checker_exception", "error": f"{type(e).__name__}: {e}"}
    valid = bool(result.get("valid"))
    return {
        "valid": valid,
        "error_type": None if valid else result.get("error_type"),
        "error": None if valid else str(result.get("error"))[:500],
    }


def score_relevance(task: ToolTask, completion: str, syntax: str = "auto") -> dict[str, Any]:
    """BFCL's relevance rule: irrelevance passes without a decodable call, relevance with one."""
    calls = parse_calls(completion, syntax)
    contains_call = bool(calls)
    should_call = "irrelevance" not in task.meta["category"]
    valid = contains_call == should_call
    error_type = None
    if not valid:
        error_type = "irrelevance_error:decoder_success" if contains_call else "relevance_error:decoder_failed"
    return {"valid": valid, "error_type": error_type, "error": None}


def score_bfcl_task(task: ToolTask, completion: str, syntax: str = "auto") -> dict[str, Any]:
    """Scores one single-turn BFCL task (AST or relevance category)."""
    category = task.meta["category"]
    if "relevance" in category:
        return score_relevance(task, completion, syntax)
    if category in MULTI_TURN:
        raise ValueError("multi-turn tasks are scored by run_multi_turn")
    return score_ast(task, completion, syntax)


# ----------------------------------------------------------------------------------------------
# multi-turn
# ----------------------------------------------------------------------------------------------


def call_strings(calls: Sequence[Mapping[str, Any]]) -> list[str]:
    """Decoded calls -> Python call strings for bfcl-eval's executor (``f(a='x')``).

    Names must be plain identifiers and arguments are rebuilt with ``repr`` from parsed
    literals, so nothing but a method call on a backend instance reaches BFCL's ``eval``.
    Calls with other names become ``__invalid_name__()``, which BFCL reports as an error.
    """
    out = []
    for c in calls:
        name = c["name"]
        if not _IDENTIFIER_RE.fullmatch(name) or not all(
            isinstance(k, str) and _IDENTIFIER_RE.fullmatch(k) for k in c["arguments"]
        ):
            out.append("__invalid_name__()")
            continue
        args = ", ".join(f"{k}={v!r}" for k, v in c["arguments"].items())
        out.append(f"{name}({args})")
    return out


class _Conversation:
    """One multi-turn BFCL entry being played (host-side state of the loop)."""

    def __init__(self, task: ToolTask, prompt_style: str, run_name: str):
        self.task = task
        self.meta = task.meta
        self.prompt_style = prompt_style
        self.run_name = run_name
        self.functions = list(self.meta["functions"])
        self.turn = -1
        self.step = 0
        self.history: list[tuple[str, str]] = []  # ToolRL dialogue turns
        self.chat: list[dict[str, Any]] = []  # json_schema-style messages
        self.extra_system = ""
        self.decoded: list[list[list[str]]] = []  # per turn, per step: call strings
        self.raw: list[list[str]] = []
        self.force_quit = False
        self.done = False
        self.next_turn()

    @property
    def category(self) -> str:
        return self.meta["category"]

    def next_turn(self) -> None:
        self.turn += 1
        self.step = 0
        turns = self.meta["turns"]
        if self.turn >= len(turns) or self.force_quit:
            self.done = True
            return
        messages = list(turns[self.turn])
        held = self.meta.get("held_out_functions", {}).get(str(self.turn))
        if held:
            self.functions = self.functions + list(held)
            messages = [{"role": "user", "content": ADDITIONAL_FUNCTION_PROMPT.format(functions=json.dumps(held))}]
        dialogue, system = question_turns(messages)
        if system:
            self.extra_system = (self.extra_system + "\n\n" + system).strip()
        self.history.extend(dialogue)
        self.chat.extend(dict(m) for m in messages)
        self.decoded.append([])
        self.raw.append([])

    def current_task(self) -> ToolTask:
        shown = add_language_hints(self.functions, self.category)
        if self.prompt_style == "toolrl":
            messages = toolrl_messages(shown, self.history, self.extra_system)
        else:
            messages = [dict(m) for m in self.chat]
        meta = dict(self.meta)
        meta.update(turn_index=self.turn, step_index=self.step)
        return ToolTask(
            id=f"{self.task.id}:turn{self.turn}:step{self.step}",
            messages=messages,
            tools=[to_json_schema(f) for f in shown],
            ground_truth="",
            ground_truth_calls=[],
            meta=meta,
        )

    def observe(self, completion: str, syntax: str, execute) -> None:
        self.raw[-1].append(completion)
        calls = parse_calls(completion, syntax)
        if not calls:  # no call, or undecodable: BFCL moves to the next turn
            self._append_assistant(completion)
            self.next_turn()
            return
        strings = call_strings(calls)
        self.decoded[-1].append(strings)
        results, _ = execute(
            strings,
            self.meta["initial_config"],
            self.meta["involved_classes"],
            self.run_name,
            self.task.id,
            long_context=("long_context" in self.category),
            is_evaL_run=False,
        )
        self._append_assistant(completion, calls, results)
        self.step += 1
        if self.step > MAXIMUM_STEP_LIMIT:
            self.force_quit = True
            self.next_turn()

    def _append_assistant(self, completion, calls=None, results=None) -> None:
        self.history.append(("assistant", completion.strip()))
        self.chat.append({"role": "assistant", "content": completion})
        if calls:
            obs = [{"name": c["name"], "results": r} for c, r in zip(calls, results)]
            self.history.append(("obs", json.dumps(obs, ensure_ascii=False)))
            for c, r in zip(calls, results):
                self.chat.append({"role": "tool", "name": c["name"], "content": r})


def run_multi_turn(
    tasks: Sequence[ToolTask],
    predict_fn: PredictFn,
    *,
    prompt_style: str = "toolrl",
    syntax: str = "auto",
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Plays BFCL multi-turn entries with ``predict_fn`` and scores them with bfcl-eval's checker.

    All live conversations are advanced together: each round asks ``predict_fn`` for the next
    assistant output of every unfinished conversation (in chunks of ``batch_size``).
    """
    checker, execute, utils_module = bfcl_multi_turn()
    run_name = f"toolrl_jax_{uuid.uuid4().hex[:10]}"
    convs = [_Conversation(t, prompt_style, run_name) for t in tasks]
    try:
        while True:
            live = [c for c in convs if not c.done]
            if not live:
                break
            for i in range(0, len(live), batch_size):
                chunk = live[i : i + batch_size]
                outs = list(predict_fn([c.current_task() for c in chunk]))
                if len(outs) != len(chunk):
                    raise ValueError(f"predict_fn returned {len(outs)} texts for {len(chunk)} tasks")
                for c, text in zip(chunk, outs):
                    c.observe(text if isinstance(text, str) else "", syntax, execute)
        results = []
        for c in convs:
            entry = {
                "id": c.meta["bfcl_id"],
                "initial_config": c.meta["initial_config"],
                "involved_classes": c.meta["involved_classes"],
            }
            gt = c.meta["turn_ground_truth"]
            if c.force_quit or len(c.decoded) != len(gt):
                res = {"valid": False, "error_type": "multi_turn:force_terminated"}
            else:
                try:
                    res = checker(c.decoded, gt, entry, c.category, run_name)
                except Exception as e:  # noqa: BLE001
                    res = {"valid": False, "error_type": "checker_exception", "error_message": f"{type(e).__name__}: {e}"}
            valid = bool(res.get("valid"))
            results.append(
                {
                    "valid": valid,
                    "error_type": None if valid else res.get("error_type"),
                    "error": None if valid else str(res.get("error_message", ""))[:500],
                    "completion": c.raw,
                }
            )
        return results
    finally:
        # bfcl-eval keeps backend instances in its module globals, keyed by model name + entry id
        prefix = re.sub(r"[-./:]", "_", run_name)
        g = vars(utils_module)
        for key in [k for k in g if k.startswith(prefix)]:
            del g[key]


# ----------------------------------------------------------------------------------------------
# whole benchmark
# ----------------------------------------------------------------------------------------------


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_bfcl(per_category: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """BFCL's group scores from per-category ``{"accuracy", "total"}`` (see module docstring)."""

    def acc(c):
        return per_category[c]["accuracy"] if c in per_category else None

    simple_parts = [acc(c) for c in ("simple_python", "simple_java", "simple_javascript") if acc(c) is not None]
    s: dict[str, Any] = {"simple": _mean(simple_parts)}
    for c in ("multiple", "parallel", "parallel_multiple"):
        s[c] = acc(c)
    non_live_parts = [s[c] for c in ("simple", "multiple", "parallel", "parallel_multiple") if s[c] is not None]
    s["non_live"] = _mean(non_live_parts)
    live = [(per_category[c]["accuracy"], per_category[c]["total"]) for c in LIVE_AST if c in per_category]
    live_total = sum(n for _, n in live)
    s["live"] = sum(a * n for a, n in live) / live_total if live_total else None
    for c in LIVE_AST:
        s[c] = acc(c)
    s["multi_turn"] = _mean([acc(c) for c in MULTI_TURN if acc(c) is not None])
    s["relevance"] = acc("live_relevance")
    s["irrelevance"] = _mean([acc(c) for c in ("irrelevance", "live_irrelevance") if acc(c) is not None])
    groups = [g for g in ("non_live", "live", "multi_turn") if s[g] is not None]
    s["overall"] = _mean([s[g] for g in groups])
    s["overall_groups"] = groups
    return s


def evaluate_bfcl(
    predict_fn: PredictFn,
    categories: str | Sequence[str] = DEFAULT_CATEGORIES,
    limit: int | None = None,
    *,
    prompt_style: str = "toolrl",
    syntax: str = "auto",
    batch_size: int = 16,
    data_dir: str | None = None,
    keep_outputs: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluates a model on BFCL categories with bfcl-eval's checkers.

    Args:
      predict_fn: maps a batch of ToolTask to one completion text each (model-agnostic).
      categories: BFCL categories or groups (``simple`` = simple_python/java/javascript,
        ``live``, ``multi_turn``, ``relevance``, ``all``...; see ``data.bfcl.CATEGORY_GROUPS``).
      limit: at most this many entries per category (the first ones, BFCL's id order).
      prompt_style: ``"toolrl"`` (ToolRL's system prompt) or ``"json_schema"`` (model template).
      syntax: how completions are decoded: ``"auto"``, ``"toolrl"`` or ``"python"``.
      batch_size: tasks per ``predict_fn`` call.
      keep_outputs: store each completion in ``entries``.
      progress: called as ``progress(done, total)`` after each batch of single-turn tasks.

    Returns:
      ``{"benchmark": "bfcl", "categories": {cat: {"accuracy", "correct", "total"}},
      "summary": {...}, "entries": [{"id", "category", "valid", "error_type", "error",
      "completion"}]}``.
    """
    cats = expand_categories(categories)
    per_category: dict[str, dict[str, Any]] = {}
    entries: list[dict[str, Any]] = []
    single: list[ToolTask] = []
    multi: list[ToolTask] = []
    for c in cats:
        loaded = load_bfcl(c, limit=limit, prompt_style=prompt_style, data_dir=data_dir)
        (multi if c in MULTI_TURN else single).extend(loaded.tasks)
    total = len(single)
    for i in range(0, total, batch_size):
        chunk = single[i : i + batch_size]
        outs = list(predict_fn(chunk))
        if len(outs) != len(chunk):
            raise ValueError(f"predict_fn returned {len(outs)} texts for {len(chunk)} tasks")
        for task, text in zip(chunk, outs):
            text = text if isinstance(text, str) else ""
            r = score_bfcl_task(task, text, syntax)
            e = {"id": task.id, "category": task.meta["category"], **r}
            if keep_outputs:
                e["completion"] = text
            entries.append(e)
        if progress is not None:
            progress(min(i + batch_size, total), total)
    if multi:
        mt = run_multi_turn(multi, predict_fn, prompt_style=prompt_style, syntax=syntax, batch_size=batch_size)
        for task, r in zip(multi, mt):
            e = {"id": task.id, "category": task.meta["category"], **r}
            if not keep_outputs:
                e.pop("completion", None)
            entries.append(e)
    for c in cats:
        rows = [e for e in entries if e["category"] == c]
        correct = sum(1 for e in rows if e["valid"])
        per_category[c] = {
            "accuracy": correct / len(rows) if rows else 0.0,
            "correct": correct,
            "total": len(rows),
        }
    return {
        "benchmark": "bfcl",
        "prompt_style": prompt_style,
        "limit": limit,
        "categories": per_category,
        "summary": summarize_bfcl(per_category),
        "entries": entries,
    }
