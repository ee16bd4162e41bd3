"""BFCL multi-turn as a training environment: bfcl-eval's Python backends as stateful tools.

BFCL's multi-turn entries (``multi_turn_base`` ...) run against eight Python backend classes
shipped with bfcl-eval (``GorillaFileSystem``, ``MathAPI``, ``MessageAPI``, ``TwitterAPI``,
``TicketAPI``, ``TradingBot``, ``TravelAPI``, ``VehicleControlAPI``; sources in
``bfcl_eval/eval_checker/multi_turn_eval/func_source_code``). An entry names the classes it uses
(``involved_classes``) and their starting state (``initial_config``).

One :class:`BFCLEnvironment` serves a batch of *different* entries through one
``ToolExecutor``:

* ``environment.tools`` is one :class:`BFCLFunctionTool` per function of every class the
  environment covers (128 for all eight; names are unique across the classes), with the
  function's JSON schema (``data.bfcl.to_json_schema`` of BFCL's doc), so the executor validates
  argument names and types before a call runs.
* ``environment.reset(trajectory_id, task)`` builds that trajectory's own backend instances
  from ``task.meta["initial_config"]`` / ``["involved_classes"]`` exactly as bfcl-eval's
  ``execute_multi_turn_func_call`` does (``cls()``, then ``_load_scenario(deepcopy(config),
  long_context=...)`` except for the stateless MathAPI) and returns a
  :class:`BFCLTrajectoryState` holding them plus the names of the entry's functions.
* A tool call receives that state (hidden parameter ``_bfcl_state``) and runs the method on the
  trajectory's instance. Only the entry's own functions may run (another class's function is
  an error text, as in BFCL, where it is not defined); argument names must be identifiers and
  values JSON literals (str, int, float, bool, None, lists and dicts of them): the rules of
  ``eval.bfcl.call_strings``. Nothing is ``eval``-ed: the bound method is called with the
  keyword arguments directly.
* Results are rendered as BFCL renders them (str as is, dict as JSON, anything else ``str()``);
  an exception in the backend becomes ``"Error during execution: <message>"``, BFCL's text.
  Every executed call is logged in the state (``call_strings`` and ``results``, BFCL call-string
  form) so a state-based reward can replay or check them after ``ToolExecutor.finish``.

Instances live in the state object only (no module globals, unlike bfcl-eval's executor), so
trajectories never share state and nothing needs cleaning up.

The training prompts of a multi-turn category (turn 0 of each entry) come from
``toolrl_jax.data.bfcl.bfcl_training_tasks``. The entry's later user turns are fed during the
rollout by :meth:`BFCLEnvironment.next_user_turn` (the ``Environment.next_user_turn`` hook of
``rollout.turns``): when an assistant turn ends without a tool call, user turn ``u`` follows as
a user message on the same backend instances (miss_func: the held-out functions become callable
at their turn and are announced with BFCL's message). :func:`bfcl_turn_checks` scores each user
turn with bfcl-eval's own state and response checks (the sub-checkers of its
``multi_turn_checker``), the per-turn reward of ``train.rewards`` component ``bfcl``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import os
import re
import sys
import uuid
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from toolrl_jax.data.bfcl import (
    MULTI_TURN_FUNC_DOC_FILES,
    bfcl_data_dir,
    read_jsonl,
    to_json_schema,
)
from toolrl_jax.data.task import ToolTask
from toolrl_jax.errors import DataError
from toolrl_jax.eval.bfcl import ADDITIONAL_FUNCTION_PROMPT, bfcl_multi_turn

__all__ = [
    "BFCLEnvironment",
    "BFCLFunctionTool",
    "BFCLTrajectoryState",
    "BFCLTurnChecks",
    "STATE_PARAM",
    "bfcl_turn_checks",
    "execute_bfcl_call",
]

STATE_PARAM = "_bfcl_state"  # hidden keyword the executor fills with the trajectory's state
_IDENTIFIER_RE = re.compile(r"[A-Za-z_]\w*")


@dataclasses.dataclass(eq=False, kw_only=True)
class BFCLTrajectoryState:
    """One trajectory's BFCL backends (mutable; owned by that trajectory only).

    Attributes:
      entry_id: BFCL entry id (``multi_turn_base_0``), or "" for a trajectory started without
        a task (then every call is an error text).
      category: BFCL category (``long_context`` backends load their long scenario).
      allowed: names of the functions the entry shows the model.
      instances: class name -> backend instance.
      owner: function name -> class name, for the allowed functions.
      call_strings: executed calls in BFCL's call-string form (``mkdir(dir_name='temp')``), in
        order, including rejected ones.
      results: the result text of each logged call.
    """

    entry_id: str
    category: str
    allowed: frozenset[str]
    instances: dict[str, Any]
    owner: dict[str, str]
    call_strings: list[str] = dataclasses.field(default_factory=list)
    results: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BFCLFunctionTool:
    """A BFCL backend function as a ``Tool``; runs on the trajectory's state.

    Attributes:
      name: the function name (BFCL method name).
      schema: ``{"name", "description", "parameters"}`` (``data.bfcl.to_json_schema``).
      class_name: the backend class defining it.
      state_param: ``STATE_PARAM``; the executor passes the trajectory's state there.
    """

    name: str
    schema: dict
    class_name: str
    state_param: str = STATE_PARAM

    def __call__(self, **arguments: Any) -> str:
        state = arguments.pop(STATE_PARAM, None)
        return execute_bfcl_call(state, self.name, arguments)


def _is_literal(value: Any, depth: int = 0) -> bool:
    """JSON-like literal (what a parsed call may carry); no objects, bounded nesting."""
    if depth > 32:
        return False
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_literal(v, depth + 1) for k, v in value.items())
    return False


def _call_string(name: str, arguments: Mapping[str, Any]) -> str:
    try:
        args = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    except Exception:  # noqa: BLE001 - an object whose repr fails
        args = "..."
    return f"{name}({args})"


def _render_result(value: Any) -> str:
    """bfcl-eval's rendering (``execute_multi_turn_func_call``): str as is, dict as JSON, else str()."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except Exception:  # noqa: BLE001 - as BFCL: fall back to str
            return str(value)
    return str(value)


def execute_bfcl_call(state: BFCLTrajectoryState | None, name: str, arguments: Mapping[str, Any]) -> str:
    """Runs ``name(**arguments)`` on the trajectory's backend; returns the result text.

    Never raises: an unknown function, a non-identifier argument name, a non-literal value or an
    exception inside the backend become error text (backend exceptions in BFCL's form
    ``"Error during execution: ..."``). The call and its text are logged in ``state``.
    """
    arguments = dict(arguments) if isinstance(arguments, Mapping) else {}
    if state is None or not state.entry_id:
        return "Error: no BFCL entry was loaded for this trajectory (start it with its task)."
    if not isinstance(name, str) or not _IDENTIFIER_RE.fullmatch(name):
        text = f"Error: invalid function name {name!r}."
    elif name not in state.allowed:
        available = ", ".join(sorted(state.allowed))
        text = f"Error: unknown function '{name}'. Available functions: {available}."
    elif not all(isinstance(k, str) and _IDENTIFIER_RE.fullmatch(k) for k in arguments):
        text = f"Error: invalid argument names for '{name}'."
    elif not all(_is_literal(v) for v in arguments.values()):
        text = f"Error: arguments of '{name}' must be literal values (strings, numbers, booleans, null, lists, objects)."
    else:
        instance = state.instances.get(state.owner.get(name, ""))
        method = getattr(instance, name, None) if instance is not None else None
        if method is None or name.startswith("_") or not inspect.ismethod(method):
            text = f"Error during execution: name '{name}' is not defined"
        else:
            try:
                text = _render_result(method(**copy.deepcopy(arguments)))
            except Exception as e:  # noqa: BLE001 - BFCL turns every backend exception into text
                text = f"Error during execution: {e}"
    state.call_strings.append(_call_string(str(name), arguments))
    state.results.append(text)
    return text


class BFCLEnvironment:
    """``ToolEnvironment`` over bfcl-eval's multi-turn backends (see module docstring).

    Args:
      classes: backend classes whose functions become tools (default: all eight multi-turn
        classes). ``BFCLEnvironment.for_tasks(tasks)`` keeps only the classes the tasks use.
      data_dir: a ``bfcl_eval/data``-shaped directory for the function docs (default: the
        installed package's).

    Attributes:
      tools: one ``BFCLFunctionTool`` per function of ``classes``.
    """

    def __init__(self, classes: Sequence[str] | None = None, *, data_dir: str | os.PathLike | None = None):
        _, _, utils = bfcl_multi_turn()  # checks bfcl-eval and mpmath are importable
        self._class_modules: dict[str, str] = dict(utils.CLASS_FILE_PATH_MAPPING)
        self._stateless = frozenset(utils.STATELESS_CLASSES)
        classes = tuple(MULTI_TURN_FUNC_DOC_FILES) if classes is None else tuple(dict.fromkeys(classes))
        unknown = [c for c in classes if c not in MULTI_TURN_FUNC_DOC_FILES]
        if unknown:
            raise DataError(f"unknown BFCL class {unknown[0]!r} (known: {', '.join(MULTI_TURN_FUNC_DOC_FILES)})")
        d = Path(data_dir) if data_dir is not None else bfcl_data_dir()
        tools: list[BFCLFunctionTool] = []
        self._owner: dict[str, str] = {}
        for cls in classes:
            for doc in read_jsonl(d / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILES[cls]):
                if doc["name"] in self._owner:
                    raise DataError(f"BFCL function {doc['name']!r} is defined by {self._owner[doc['name']]} and {cls}")
                self._owner[doc["name"]] = cls
                tools.append(BFCLFunctionTool(name=doc["name"], schema=to_json_schema(doc), class_name=cls))
        self.classes = classes
        self.tools: tuple[BFCLFunctionTool, ...] = tuple(tools)

    @classmethod
    def for_tasks(cls, tasks: Sequence[ToolTask], *, data_dir: str | os.PathLike | None = None) -> "BFCLEnvironment":
        """An environment whose tools are the functions of the classes ``tasks`` involve."""
        classes: dict[str, None] = {}
        for t in tasks:
            classes.update(dict.fromkeys(t.meta.get("involved_classes", [])))
        return cls(tuple(classes), data_dir=data_dir)

    def reset(self, trajectory_id: Hashable, task: Any = None) -> BFCLTrajectoryState:
        """Fresh backend instances for one trajectory of ``task`` (a ToolTask or its meta dict).

        ``task=None`` gives an empty state on which every call is an error text.

        Raises:
          DataError: the task is not a BFCL multi-turn task, or uses a class this environment
            was not built with.
        """
        if task is None:
            return BFCLTrajectoryState(entry_id="", category="", allowed=frozenset(), instances={}, owner={})
        meta = task.meta if isinstance(task, ToolTask) else task
        if not isinstance(meta, Mapping) or "involved_classes" not in meta:
            raise DataError(f"trajectory {trajectory_id!r}: task has no BFCL meta (involved_classes); "
                            "use bfcl_training_tasks() or load_bfcl(multi_turn_*)")
        category = str(meta.get("category", "multi_turn_base"))
        long_context = "long_context" in category
        initial_config = meta.get("initial_config") or {}
        instances: dict[str, Any] = {}
        for class_name in meta["involved_classes"]:
            if class_name not in self.classes:
                raise DataError(f"trajectory {trajectory_id!r}: BFCL class {class_name} is not in this "
                                f"environment (build it with BFCLEnvironment.for_tasks(tasks))")
            module = importlib.import_module(self._class_modules[class_name])
            instance = getattr(module, class_name)()
            if class_name not in self._stateless:
                instance._load_scenario(copy.deepcopy(initial_config.get(class_name, {})), long_context=long_context)
            instances[class_name] = instance
        names = [f["name"] for f in meta.get("functions", [])]
        allowed = frozenset(n for n in names if self._owner.get(n) in instances)
        return BFCLTrajectoryState(
            entry_id=str(meta.get("bfcl_id", trajectory_id)),
            category=category,
            allowed=allowed,
            instances=instances,
            owner={n: self._owner[n] for n in allowed},
        )

    def next_user_turn(self, task: Any, user_turn: int, state: BFCLTrajectoryState | None = None
                       ) -> list[dict] | None:
        """The messages of user turn ``user_turn`` (1, 2, ...) of a BFCL multi-turn ``task``,
        or None when the entry has no such turn (the trajectory then ends).

        The user messages of ``meta["turns"][user_turn]`` as BFCL gives them; at a miss_func
        turn with held-out functions, BFCL's ``ADDITIONAL_FUNCTION_PROMPT`` listing them instead
        (as :mod:`toolrl_jax.eval.bfcl` plays it), and the functions become callable on
        ``state`` (the trajectory's carried-over backends).
        """
        meta = task.meta if isinstance(task, ToolTask) else (task or {})
        turns = meta.get("turns") or []
        if not 0 < user_turn < len(turns):
            return None
        held = (meta.get("held_out_functions") or {}).get(str(user_turn))
        if held:
            if state is not None and state.entry_id:
                names = {f["name"] for f in held if self._owner.get(f["name"]) in state.instances}
                state.allowed = state.allowed | names
                state.owner.update({n: self._owner[n] for n in names})
            return [{"role": "user",
                     "content": ADDITIONAL_FUNCTION_PROMPT.format(functions=json.dumps(held))}]
        return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))}
                for m in turns[user_turn] if m.get("role") != "system"]


@dataclasses.dataclass(frozen=True)
class BFCLTurnChecks:
    """bfcl-eval's verdicts on one played entry.

    Attributes:
      turns: one bool per user turn the trajectory reached (at most the entry's turns): the
        state check (every backend instance equals the ground truth's after the same turns) and
        the response check (the ground truth's results of this turn are among the model's
        results so far) passed; a turn whose ground truth is empty (miss_param / miss_func)
        passes when the model made no call.
      valid: bfcl-eval's ``multi_turn_checker`` verdict on the whole entry (False when not
        every user turn was reached): the benchmark's multi-turn accuracy.
    """

    turns: tuple[bool, ...]
    valid: bool


def bfcl_turn_checks(task: ToolTask, turn_calls: Sequence[Sequence[Sequence[str]]]
                     ) -> BFCLTurnChecks:
    """Per-user-turn checks of a BFCL multi-turn ``task`` played with ``turn_calls``.

    Args:
      task: a BFCL multi-turn task (``meta``: ``turn_ground_truth``, ``initial_config``,
        ``involved_classes``, ``bfcl_id``).
      turn_calls: per user turn reached, per assistant step with calls, the BFCL call strings
        (``eval.bfcl.call_strings``) of that step.

    The loop of bfcl-eval's ``multi_turn_checker`` (its executor, ``state_checker`` and
    ``response_checker``) without its early exit, so every reached turn gets its own verdict;
    the state is cumulative (turn ``u`` is checked after turns ``0..u`` of both the model and
    the ground truth), as in BFCL.
    """
    checker, execute, utils = bfcl_multi_turn()
    checks = sys.modules[checker.__module__]
    meta = task.meta
    gt = [list(t) for t in meta.get("turn_ground_truth") or []]
    entry_id = str(meta["bfcl_id"])
    category = entry_id.rsplit("_", 1)[0]
    run = {"initial_config": meta.get("initial_config") or {},
           "involved_classes": list(meta["involved_classes"]), "test_entry_id": entry_id,
           "long_context": "long_context" in category or "composite" in category,
           "is_evaL_run": True}
    name = f"toolrl_jax_turns_{uuid.uuid4().hex[:10]}"
    played = [[list(step) for step in steps] for steps in turn_calls[:len(gt)]]
    verdicts: list[bool] = []
    so_far: list[str] = []
    try:
        for u, steps in enumerate(played):
            model_instances: dict = {}
            for step in steps:
                results, model_instances = execute(func_call_list=step, model_name=name, **run)
                so_far.extend(results)
            gt_results, gt_instances = execute(func_call_list=gt[u],
                                               model_name=name + "_ground_truth", **run)
            if not gt[u]:
                verdicts.append(bool(utils.is_empty_execute_response(steps)))
            elif utils.is_empty_execute_response(steps):
                verdicts.append(False)
            else:
                verdicts.append(bool(checks.state_checker(model_instances, gt_instances)["valid"])
                                and bool(checks.response_checker(so_far, gt_results, u)["valid"]))
        valid = False
        if len(played) == len(gt):
            entry = {"id": entry_id, "initial_config": run["initial_config"],
                     "involved_classes": run["involved_classes"]}
            valid = bool(checker(played, gt, entry, category, name + "_entry").get("valid"))
    finally:  # bfcl-eval keeps backend instances in module globals keyed by model name
        g = vars(utils)
        for key in [k for k in g if k.startswith(name)]:
            del g[key]
    return BFCLTurnChecks(turns=tuple(verdicts), valid=valid)
