"""Result tables in the layout of ToolRL's paper (arXiv 2504.13958) and JSON output.

* BFCL (ToolRL Table 1 / BFCL leaderboard columns): Overall | Non-Live (AST): Simple, Multiple,
  Parallel, Parallel Multiple, Summary | Live | Multi-Turn | Relevance | Irrelevance.
* API-Bank (ToolRL Table 3): Level-1 | Level-2 | (Level-3 ...) | Overall.
* ToolRL test split: Exact match | Reward | Format | Correctness.

Numbers are percentages with two decimals (rewards as raw means); ``-`` marks a column that was
not evaluated. Rows are models, so before/after comparisons print as one table.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from typing import Any, Mapping, TextIO


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100.0 * float(x):.2f}"


def _num(x: Any) -> str:
    if x is None:
        return "-"
    return f"{float(x):.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"  # noqa: E731
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


BFCL_COLUMNS = [
    ("Overall", "overall"),
    ("Non-Live AST", "non_live"),
    ("Simple", "simple"),
    ("Multiple", "multiple"),
    ("Parallel", "parallel"),
    ("Parallel Multiple", "parallel_multiple"),
    ("Live", "live"),
    ("Multi-Turn", "multi_turn"),
    ("Relevance", "relevance"),
    ("Irrelevance", "irrelevance"),
]


def format_bfcl_table(results_by_model: Mapping[str, Mapping[str, Any]]) -> str:
    header = ["Model"] + [h for h, _ in BFCL_COLUMNS]
    rows = []
    notes = set()
    for name, res in results_by_model.items():
        s = res["summary"]
        rows.append([name] + [_pct(s.get(k)) for _, k in BFCL_COLUMNS])
        groups = s.get("overall_groups", [])
        if groups and set(groups) != {"non_live", "live", "multi_turn"}:
            notes.add("Overall = mean of the evaluated groups: " + ", ".join(groups))
        if res.get("limit"):
            notes.add(f"first {res['limit']} entries per category (--limit)")
    title = "BFCL v4 data, bfcl-eval checkers (accuracy %)"
    out = title + "\n" + _table(header, rows)
    if notes:
        out += "\n" + "\n".join(f"note: {n}" for n in sorted(notes))
    return out


def format_apibank_table(results_by_model: Mapping[str, Mapping[str, Any]]) -> str:
    levels: list[str] = []
    for res in results_by_model.values():
        for k in res["levels"]:
            if k not in levels:
                levels.append(k)
    header = ["Model"] + [k.replace("level-", "Level-") for k in levels] + ["Overall"]
    rows = []
    for name, res in results_by_model.items():
        rows.append(
            [name]
            + [_pct(res["levels"][k]["accuracy"]) if k in res["levels"] else "-" for k in levels]
            + [_pct(res["overall"]["accuracy"])]
        )
    return "API-Bank (exact match of name and parameters, %)\n" + _table(header, rows)


def format_toolrl_table(results_by_model: Mapping[str, Mapping[str, Any]]) -> str:
    header = ["Model", "Tasks", "Exact match", "Reward", "Format", "Correctness"]
    rows = []
    for name, res in results_by_model.items():
        r = res.get("reward") or {}
        rows.append(
            [name, str(res["total"]), _pct(res["exact_match"]), _num(r.get("reward")),
             _num(r.get("format")), _num(r.get("correctness"))]
        )
    return "ToolRL-format tasks (exact match %, mean reward)\n" + _table(header, rows)


def format_table(results_by_model: Mapping[str, Mapping[str, Any]]) -> str:
    """One table for results of one benchmark, one row per model (``{model_name: results}``)."""
    kinds = {res.get("benchmark") for res in results_by_model.values()}
    if len(kinds) != 1:
        raise ValueError(f"results of different benchmarks in one table: {sorted(map(str, kinds))}")
    kind = kinds.pop()
    if kind == "bfcl":
        return format_bfcl_table(results_by_model)
    if kind == "apibank":
        return format_apibank_table(results_by_model)
    if kind == "toolrl":
        return format_toolrl_table(results_by_model)
    raise ValueError(f"unknown benchmark {kind!r}")


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    return x


def write_json(results: Mapping[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Writes results (with per-entry details) as indented JSON; creates parent directories."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(results), f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, p)
    return p


def print_report(
    results: Mapping[str, Any],
    model_name: str = "model",
    *,
    output: str | os.PathLike | None = None,
    file: TextIO | None = None,
) -> str:
    """Prints the table for one model's results (and writes JSON to ``output`` if given)."""
    text = format_table({model_name: results})
    print(text, file=file or sys.stdout)
    if output is not None:
        write_json({"model": model_name, **results}, output)
    return text
