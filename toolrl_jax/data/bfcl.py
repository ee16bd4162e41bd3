"""BFCL v4 (Berkeley Function Calling Leaderboard) questions from the installed ``bfcl-eval`` package.

The package ships ``bfcl_eval/data/BFCL_v4_<category>.json`` (JSON lines: ``id``, ``question``
= list of turns, each a list of ``{role, content}``, ``function`` = function docs) and
``possible_answer/BFCL_v4_<category>.json`` (``ground_truth`` = ``[{func: {param: [allowed
values]}}]``; ``""`` among the allowed values marks an optional parameter). Multi-turn entries
carry ``initial_config`` / ``involved_classes`` instead of ``function``; their docs live in
``multi_turn_func_doc/`` and their ground truth is one list of Python call strings per turn.

The package is located with ``importlib.util.find_spec`` and never imported here (importing
parts of it pulls every API client; see ``toolrl_jax.eval.bfcl`` for the checker import).

Two prompt styles:

* ``"toolrl"`` (ToolRL's prompt mode): system = ToolRL's instruction listing the functions
  (BFCL's language-hinted docs, as BFCL shows them to prompting models), user = ToolRL's
  ``**Dialogue Records History**`` with the question.
* ``"json_schema"``: the question messages as they are, and ``ToolTask.tools`` as JSON-schema
  function dicts (BFCL's types cast like its ``GORILLA_TO_OPENAPI`` mapping), for a model's
  own tool chat template.

``ToolTask.ground_truth`` renders the first allowed value of every parameter as a ToolRL turn
(parameters whose first allowed value is ``""`` are left out), so feeding it back to the
evaluator scores 100%.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

from toolrl_jax.data.task import (
    LoadedTasks,
    ToolTask,
    collect,
    dialogue_history,
    render_toolrl_output,
    toolrl_system_prompt,
)
from toolrl_jax.errors import DataError

VERSION_PREFIX = "BFCL_v4"

NON_LIVE_AST = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple")
LIVE_AST = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
RELEVANCE = ("irrelevance", "live_irrelevance", "live_relevance")
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
ALL_CATEGORIES = NON_LIVE_AST + LIVE_AST + RELEVANCE + MULTI_TURN

# Names accepted by --categories besides the categories themselves.
CATEGORY_GROUPS: dict[str, tuple[str, ...]] = {
    "simple": ("simple_python", "simple_java", "simple_javascript"),
    "non_live": NON_LIVE_AST + ("irrelevance",),
    "live": LIVE_AST + ("live_irrelevance", "live_relevance"),
    "relevance": RELEVANCE,
    "multi_turn": MULTI_TURN,
    "single_turn": NON_LIVE_AST + LIVE_AST + RELEVANCE,
    "ast": NON_LIVE_AST + LIVE_AST,
    "all": ALL_CATEGORIES,
}

MULTI_TURN_FUNC_DOC_FILES = {
    "GorillaFileSystem": "gorilla_file_system.json",
    "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json",
    "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}

# BFCL's GORILLA_TO_OPENAPI (bfcl_eval/constants/type_mappings.py)
_TO_JSON_SCHEMA = {
    "integer": "integer", "number": "number", "float": "number", "string": "string",
    "boolean": "boolean", "bool": "boolean", "array": "array", "list": "array", "dict": "object",
    "object": "object", "tuple": "array", "any": "string", "byte": "integer", "short": "integer",
    "long": "integer", "double": "number", "char": "string", "ArrayList": "array", "Array": "array",
    "HashMap": "object", "Hashtable": "object", "Queue": "array", "Stack": "array", "Any": "string",
    "String": "string", "Bigint": "integer",
}

IRRELEVANCE_RESPONSE = "None of the available functions can be used to answer this request."


def expand_categories(categories: str | Sequence[str]) -> list[str]:
    """Expands group names (``simple``, ``live``, ``all``, ...) to BFCL categories, keeping order."""
    if isinstance(categories, str):
        categories = [c for c in categories.replace(",", " ").split() if c]
    out: list[str] = []
    for c in categories:
        for name in CATEGORY_GROUPS.get(c, (c,)):
            if name not in ALL_CATEGORIES:
                close = difflib.get_close_matches(name, list(ALL_CATEGORIES) + list(CATEGORY_GROUPS), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise DataError(f"unknown BFCL category '{name}'{hint}")
            if name not in out:
                out.append(name)
    return out


def bfcl_data_dir() -> pathlib.Path:
    """``bfcl_eval/data`` of the installed bfcl-eval package (found without importing it)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "bfcl-eval is not installed: run `toolrl-jax setup-data` (or pip install --no-deps "
            "bfcl-eval==2026.3.23; never let pip resolve its dependencies)"
        )
    d = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
    if not d.is_dir():
        raise DataError(f"bfcl-eval data directory not found: {d}")
    return d


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"BFCL file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def copy_json(x: Any) -> Any:
    """Deep copy of JSON data (several times faster than copy.deepcopy)."""
    return json.loads(json.dumps(x))


def language_of(category: str) -> str:
    if "javascript" in category:
        return "javascript"
    if "java" in category:
        return "java"
    return "python"


# ----------------------------------------------------------------------------------------------
# function docs
# ----------------------------------------------------------------------------------------------


def add_language_hints(functions: Sequence[Mapping[str, Any]], category: str) -> list[dict]:
    """BFCL's ``_func_doc_language_specific_pre_processing`` (bfcl_eval/utils.py), on a copy.

    Appends "Note that the provided function is in Python 3 / Java 8 SDK / JavaScript syntax."
    to descriptions; for Java and JavaScript every parameter becomes a string (with a hint of
    its real type), as BFCL shows those docs to models.
    """
    lang = language_of(category)
    functions = copy_json(list(functions))
    hint = {
        "java": " Note that the provided function is in Java 8 SDK syntax.",
        "javascript": " Note that the provided function is in JavaScript syntax.",
        "python": " Note that the provided function is in Python 3 syntax.",
    }[lang]
    for item in functions:
        item["description"] = item["description"] + hint
        properties = item["parameters"]["properties"]
        if lang == "java":
            for value in properties.values():
                if value["type"] == "any":
                    value["description"] += " This parameter can be of any type of Java object in string representation."
                else:
                    value["description"] += f" This is Java {value['type']} type parameter in string representation."
                if value["type"] in ("ArrayList", "Array"):
                    value["description"] += f" The list elements are of type {value['items']['type']}; they are not in string representation."
                    del value["items"]
                value["type"] = "string"
        elif lang == "javascript":
            for value in properties.values():
                if value["type"] == "any":
                    value["description"] += " This parameter can be of any type of JavaScript object in string representation."
                else:
                    value["description"] += f" This is JavaScript {value['type']} type parameter in string representation."
                if value["type"] == "array":
                    value["description"] += f" The list elements are of type {value['items']['type']}; they are not in string representation."
                    del value["items"]
                if value["type"] == "dict" and "properties" in value:
                    value["description"] += f" The dictionary entries have the following schema; they are not in string representation. {json.dumps(value['properties'])}"
                    del value["properties"]
                value["type"] = "string"
    return functions


def _cast_schema(prop: Mapping[str, Any]) -> dict[str, Any]:
    prop = dict(prop)
    prop["type"] = _TO_JSON_SCHEMA.get(prop.get("type", "string"), "string")
    if isinstance(prop.get("properties"), Mapping):
        prop["properties"] = {k: _cast_schema(v) for k, v in prop["properties"].items()}
    if isinstance(prop.get("items"), Mapping):
        prop["items"] = _cast_schema(prop["items"])
    return prop


def to_json_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    """A BFCL function doc -> JSON-schema function dict (types cast as BFCL's GORILLA_TO_OPENAPI)."""
    params = function.get("parameters", {}) or {}
    props = {k: _cast_schema(v) for k, v in (params.get("properties") or {}).items()}
    return {
        "name": function["name"],
        "description": function.get("description", ""),
        "parameters": {"type": "object", "properties": props, "required": list(params.get("required", []))},
    }


# ----------------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------------


def _resolve(value: Any) -> Any:
    """Resolves nested option structures: a dict's values are lists of allowed values."""
    if isinstance(value, dict):
        out = {}
        for k, options in value.items():
            if isinstance(options, list) and options:
                if options[0] == "":
                    continue
                out[k] = _resolve(options[0])
            else:
                out[k] = options
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_resolve(v) for v in value]
    return value


def _java_literal(value: Any, typ: str, nested: str | None = None) -> str:
    """A Python value -> Java source text that bfcl-eval's ``java_type_converter`` maps back."""
    if isinstance(value, str):
        return value  # already source text (a variable name, an expression, a string)
    if typ == "boolean":
        return "true" if value else "false"
    if typ == "long":
        return f"{int(value)}L"
    if typ == "float":
        return f"{float(value)!r}f"
    if typ == "double":
        return repr(float(value))
    if typ in ("byte", "short", "integer"):
        return str(int(value))
    if typ == "ArrayList" and isinstance(value, list):
        if not value:
            return "new ArrayList<>()"
        items = [f'"{v}"' if nested in ("String", None) and isinstance(v, str) else _java_literal(v, nested or "String") for v in value]
        return f"new ArrayList<>(Arrays.asList({', '.join(items)}))"
    if typ == "Array" and isinstance(value, list):
        items = [str(v) if isinstance(v, str) else _java_literal(v, nested or "String") for v in value]
        return f"new {nested or 'Object'}[]{{{', '.join(items)}}}"
    if typ == "HashMap" and isinstance(value, dict):
        puts = " ".join(f'put("{k}", {_java_scalar(v)});' for k, v in value.items())
        return f"new HashMap<String, String>() {{{{ {puts} }}}}"
    return value if isinstance(value, str) else str(value)


def _java_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _js_literal(value: Any, typ: str, nested: str | None = None) -> str:
    """A Python value -> JavaScript source text that bfcl-eval's ``js_type_converter`` maps back."""
    if isinstance(value, str):
        return value  # already source text (a variable name, an expression, a string)
    if typ == "Boolean":
        return "true" if value else "false"
    if typ == "Bigint":
        return f"{int(value)}n"
    if typ == "integer":
        return str(int(value))
    if typ == "float":
        return repr(float(value))
    if typ in ("array", "dict"):
        return _js_value(value)
    return value if isinstance(value, str) else str(value)


def _js_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_js_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_js_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def possible_answer_to_calls(
    ground_truth: Sequence[Mapping[str, Any]],
    functions: Sequence[Mapping[str, Any]] = (),
    language: str = "python",
) -> list[dict[str, Any]]:
    """BFCL ``[{func: {param: [allowed...]}}]`` -> ``[{"name", "arguments"}]`` that BFCL accepts.

    Takes the first allowed value of each parameter; leaves out optional ones (first allowed
    value ``""``) unless the doc lists them as required, and ones the doc does not know. For
    Java / JavaScript the values become source text (``"true"``, ``"5L"``, ``"new
    ArrayList<>(Arrays.asList(..))"``), as BFCL expects those models to answer.
    """
    docs = {f.get("name"): f for f in functions}
    calls = []
    for item in ground_truth:
        (name, params), = item.items()
        doc = docs.get(name)
        props = ((doc or {}).get("parameters") or {}).get("properties", {})
        required = set(((doc or {}).get("parameters") or {}).get("required", []))
        args = {}
        for p, options in params.items():
            chosen = [o for o in options if o != ""]
            if not chosen or (options[0] == "" and p not in required) or (doc and p not in props and "" in options):
                continue  # optional: leave it out
            value = _resolve(chosen[0])
            schema = props.get(p, {})
            typ, nested = schema.get("type", "string"), (schema.get("items") or {}).get("type")
            if language == "java":
                value = _java_literal(value, typ, nested)
            elif language == "javascript":
                value = _js_literal(value, typ, nested)
            args[p] = value
        calls.append({"name": name, "arguments": args})
    return calls


def parse_call_string(call: str, functions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A Python call string (BFCL multi-turn ground truth, ``"mv(source='a', destination='b')"``)
    -> ``{"name", "arguments"}``; positional arguments are named by the doc's property order."""
    tree = ast.parse(call.strip(), mode="eval").body
    if not isinstance(tree, ast.Call):
        raise ValueError(f"not a call: {call!r}")
    name = ast.unparse(tree.func)
    args: dict[str, Any] = {}
    if tree.args:
        doc = next((f for f in functions if f.get("name") == name), None)
        order = list(((doc or {}).get("parameters") or {}).get("properties", {}))
        if len(order) < len(tree.args):
            raise ValueError(f"cannot name positional arguments of {call!r}")
        for key, node in zip(order, tree.args):
            args[key] = ast.literal_eval(node)
    for kw in tree.keywords:
        args[kw.arg] = ast.literal_eval(kw.value)
    return {"name": name, "arguments": args}


def multi_turn_functions(
    entry: Mapping[str, Any], data_dir: pathlib.Path, cache: dict[str, list[dict]] | None = None
) -> tuple[list[dict], dict[str, list[dict]]]:
    """Function docs of a multi-turn entry and the held-out ones per turn (miss_func).

    ``cache`` (class name -> docs) avoids re-reading the doc files for every entry.
    """
    cache = {} if cache is None else cache
    functions: list[dict] = []
    for cls in entry.get("involved_classes", []):
        fname = MULTI_TURN_FUNC_DOC_FILES.get(cls)
        if fname is None:
            raise DataError(f"{entry.get('id')}: unknown BFCL class {cls}")
        if cls not in cache:
            cache[cls] = read_jsonl(data_dir / "multi_turn_func_doc" / fname)
        functions.extend(copy_json(cache[cls]))
    held_out: dict[str, list[dict]] = {}
    for turn, names in (entry.get("missed_function") or {}).items():
        held_out[str(turn)] = [f for f in functions if f["name"] in names]
        functions = [f for f in functions if f["name"] not in names]
    return functions, held_out


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------


def toolrl_messages(functions: Sequence[Mapping[str, Any]], turns: Sequence[tuple[str, str]], extra_system: str = "") -> list[dict]:
    """``[system (ToolRL prompt over ``functions``), user (dialogue history of ``turns``)]``."""
    system = toolrl_system_prompt(functions)
    if extra_system:
        system = system + "\n\n" + extra_system
    return [{"role": "system", "content": system}, {"role": "user", "content": dialogue_history(turns)}]


def question_turns(messages: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[str, str]], str]:
    """BFCL question messages -> (ToolRL dialogue turns, extra system text)."""
    turns, system = [], []
    for m in messages:
        role, content = m.get("role"), str(m.get("content", ""))
        if role == "system":
            system.append(content)
        elif role == "assistant":
            turns.append(("assistant", content))
        elif role == "tool":
            turns.append(("obs", content))
        else:
            turns.append(("user", content))
    return turns, "\n\n".join(system)


def _entry_to_task(
    entry: Mapping[str, Any],
    answer: Mapping[str, Any] | None,
    category: str,
    prompt_style: str,
    data_dir: pathlib.Path,
    doc_cache: dict[str, list[dict]] | None = None,
) -> ToolTask:
    bfcl_id = entry["id"]
    question = entry["question"]
    meta: dict[str, Any] = {
        "source": "bfcl",
        "category": category,
        "bfcl_id": bfcl_id,
        "language": language_of(category),
        "prompt_style": prompt_style,
    }
    if category in MULTI_TURN:
        functions, held_out = multi_turn_functions(entry, data_dir, doc_cache)
        turn_gt = list(answer["ground_truth"]) if answer else []
        first_calls = [parse_call_string(c, functions) for c in (turn_gt[0] if turn_gt else [])]
        meta.update(
            initial_config=entry.get("initial_config", {}),
            involved_classes=list(entry.get("involved_classes", [])),
            held_out_functions=held_out,
            turns=question,
            turn_ground_truth=turn_gt,
        )
        first_turn = question[0]
    else:
        functions = list(entry["function"])
        first_turn = question[0]
        if len(question) != 1:
            raise ValueError(f"{bfcl_id}: single-turn entry with {len(question)} turns")
        first_calls = (
            possible_answer_to_calls(answer["ground_truth"], functions, language_of(category)) if answer else []
        )
        meta["possible_answer"] = answer["ground_truth"] if answer else None
    meta["functions"] = functions  # BFCL's own docs, as its checker expects them
    shown = add_language_hints(functions, category)
    if category in ("irrelevance", "live_irrelevance"):
        ground_truth = render_toolrl_output(response=IRRELEVANCE_RESPONSE)
        meta["ground_truth_known"] = True
    elif category == "live_relevance":
        ground_truth = ""  # any call counts; no reference call is given
        meta["ground_truth_known"] = False
    else:
        ground_truth = render_toolrl_output(first_calls)
        meta["ground_truth_known"] = bool(first_calls) or category in MULTI_TURN
    if prompt_style == "toolrl":
        turns, extra_system = question_turns(first_turn)
        messages = toolrl_messages(shown, turns, extra_system)
    elif prompt_style == "json_schema":
        messages = [dict(m) for m in first_turn]
    else:
        raise DataError(f"unknown prompt_style '{prompt_style}' (use 'toolrl' or 'json_schema')")
    return ToolTask(
        id=bfcl_id,
        messages=messages,
        tools=[to_json_schema(f) for f in shown],
        ground_truth=ground_truth,
        ground_truth_calls=first_calls,
        meta=meta,
    )


def load_bfcl(
    category: str,
    *,
    limit: int | None = None,
    prompt_style: str = "toolrl",
    data_dir: str | os.PathLike | None = None,
) -> LoadedTasks:
    """Loads one BFCL v4 category (see ``ALL_CATEGORIES``) as ToolTasks.

    Args:
      category: e.g. ``"simple_python"``, ``"parallel_multiple"``, ``"live_simple"``,
        ``"irrelevance"``, ``"multi_turn_base"``.
      limit: keep the first ``limit`` entries (file order, which is BFCL's id order).
      prompt_style: ``"toolrl"`` or ``"json_schema"`` (see module docstring).
      data_dir: a ``bfcl_eval/data``-shaped directory; default: the installed package's.
    """
    if category not in ALL_CATEGORIES:
        expand_categories([category])  # raises with a suggestion
    if prompt_style not in ("toolrl", "json_schema"):
        raise DataError(f"unknown prompt_style '{prompt_style}' (use 'toolrl' or 'json_schema')")
    d = pathlib.Path(data_dir) if data_dir is not None else bfcl_data_dir()
    path = d / f"{VERSION_PREFIX}_{category}.json"
    entries = read_jsonl(path)
    answers: list[Mapping[str, Any] | None]
    answer_path = d / "possible_answer" / f"{VERSION_PREFIX}_{category}.json"
    if category in RELEVANCE:
        answers = [None] * len(entries)
    else:
        answers = read_jsonl(answer_path)
        if len(answers) != len(entries):
            raise DataError(f"{answer_path}: {len(answers)} answers for {len(entries)} questions")
    doc_cache: dict[str, list[dict]] = {}
    return collect(
        list(zip(entries, answers)),
        lambda i, pair: _entry_to_task(pair[0], pair[1], category, prompt_style, d, doc_cache),
        str(path),
        limit,
    )


def bfcl_training_tasks(
    category: str = "multi_turn_base",
    *,
    limit: int | None = None,
    prompt_style: str = "toolrl",
    max_calls: int | None = 8,
    data_dir: str | os.PathLike | None = None,
) -> list[ToolTask]:
    """Turn 0 of each BFCL multi-turn entry as a training prompt for ``BFCLEnvironment``; the
    entry's later user turns (``meta["turns"]``) are fed during the rollout by the environment
    (``BFCLEnvironment.next_user_turn``) and checked per user turn by the ``bfcl`` reward.

    ``messages``: ToolRL system prompt listing the entry's functions (BFCL's Python-hinted docs)
    + the user's first message (``prompt_style="json_schema"``: the raw first-turn messages and
    ``tools``). ``ground_truth``: ``<think> .. </think>\\n<tool_call>\\n{json lines}\\n</tool_call>``
    of turn 0's ground-truth calls (BFCL's call strings parsed with ``parse_call_string``). BFCL
    gives one flat call list per turn, not per assistant step; the calls run in order, so all of
    them may be emitted in the first assistant step and that is the target the ToolRL reward
    scores. ``meta`` keeps ``load_bfcl``'s (``initial_config``, ``involved_classes``,
    ``functions``, ``category``, ``bfcl_id``, ``turns``, ``turn_ground_truth``) plus
    ``turn_index=0`` and ``ground_truth_call_strings`` (turn 0's BFCL call strings).

    Entries whose turn 0 has no ground-truth call (the model must ask or answer in prose, e.g. in
    miss_param / miss_func) are skipped, and so are entries with more than ``max_calls`` calls
    (the reward's static ``max_calls``; None keeps all). ``limit`` counts loaded entries before
    skipping.
    """
    if category not in MULTI_TURN:
        raise DataError(f"bfcl_training_tasks: category '{category}' is not multi-turn (use one of {', '.join(MULTI_TURN)})")
    loaded = load_bfcl(category, limit=limit, prompt_style=prompt_style, data_dir=data_dir)
    out: list[ToolTask] = []
    for task in loaded:
        turn_gt = task.meta.get("turn_ground_truth") or []
        strings = list(turn_gt[0]) if turn_gt else []
        if not strings or (max_calls is not None and len(strings) > max_calls):
            continue
        functions = task.meta["functions"]
        calls = [parse_call_string(s, functions) for s in strings]
        meta = dict(task.meta)
        meta.update(turn_index=0, ground_truth_call_strings=strings, ground_truth_known=True)
        out.append(dataclasses.replace(
            task, ground_truth=render_toolrl_output(calls), ground_truth_calls=calls, meta=meta))
    return out
