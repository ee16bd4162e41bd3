"""API-Bank (Li et al., 2023) in ToolRL's processed format (``benchmarks/API-Bank/level-N-api_processed.json``).

Each file is a JSON list of ``{system, user, answer, other}``: ``system`` is ToolRL's
instruction with the candidate APIs, ``user`` the dialogue history, ``answer`` the expected
call ``{"name", "parameters"}`` (level-1 files wrap it in a one-element list) and ``other``
``{"file", "id"}`` pointing at the original API-Bank dialogue. The level is read from the file
name (``level-2-...`` -> 2) unless given.

Read with the ``json`` module, not ``datasets``: Arrow's struct inference merges the
``parameters`` dicts of all records into one schema and would add ``None`` for every key a
record lacks, which changes the answers that exact-match scoring compares against.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from toolrl_jax.data.task import (
    BadRecord,
    LoadedTasks,
    ToolTask,
    collect,
    parse_toolrl_tools,
    render_toolrl_output,
)
from toolrl_jax.data.toolrl import check_file
from toolrl_jax.errors import DataError

_LEVEL_RE = re.compile(r"level[-_]?(\d+)", re.IGNORECASE)


def level_from_name(path: str | os.PathLike) -> int | None:
    """``.../level-2-api_processed.json`` -> 2; None when the name carries no level."""
    m = _LEVEL_RE.search(os.path.basename(os.fspath(path)))
    return int(m.group(1)) if m else None


def answer_calls(answer: Any) -> list[dict[str, Any]]:
    """API-Bank ``answer`` (a call dict or a list of them) -> ``[{"name", "arguments"}]``."""
    items = answer if isinstance(answer, list) else [answer]
    calls = []
    for c in items:
        if not isinstance(c, Mapping) or not isinstance(c.get("name"), str):
            raise BadRecord("bad_answer", f"call without a name: {str(c)[:60]}")
        params = c.get("parameters", c.get("arguments", {}))
        if not isinstance(params, Mapping):
            raise BadRecord("bad_answer", f"parameters is not a dict: {str(params)[:60]}")
        calls.append({"name": c["name"], "arguments": dict(params)})
    if not calls:
        raise BadRecord("bad_answer", "empty answer")
    return calls


def _record(i: int, rec: Mapping[str, Any], source: str, level: int | None) -> ToolTask:
    if not isinstance(rec, Mapping):
        raise BadRecord("not_an_object")
    system, user = rec.get("system"), rec.get("user")
    if not isinstance(system, str) or not isinstance(user, str):
        raise BadRecord("missing_system_or_user")
    if "answer" not in rec:
        raise BadRecord("missing_answer")
    calls = answer_calls(rec["answer"])
    other = rec.get("other") or {}
    rid = other.get("id", i) if isinstance(other, Mapping) else i
    return ToolTask(
        id=f"apibank-l{level if level is not None else 'x'}-{i}",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        tools=parse_toolrl_tools(system),
        ground_truth=render_toolrl_output(calls),
        ground_truth_calls=calls,
        meta={
            "source": "apibank",
            "level": level,
            "file": source,
            "index": i,
            "origin": dict(other) if isinstance(other, Mapping) else {},
            "record_id": rid,
        },
    )


def load_apibank(
    path: str | os.PathLike, level: int | None = None, limit: int | None = None
) -> LoadedTasks:
    """Loads one API-Bank file in ToolRL's processed format; bad records are counted and skipped."""
    p = check_file(path, "API-Bank")
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {p} as JSON: {e}") from e
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of {{system, user, answer}} records")
    lvl = level if level is not None else level_from_name(p)
    return collect(data, lambda i, r: _record(i, r, str(p), lvl), str(p), limit)
