"""Loaders for ToolRL's data formats (arXiv 2504.13958, github.com/qiancheng0/ToolRL).

* verl parquet (``rlla_4k/{train,test}.parquet``): columns ``prompt`` = ``[system, user]``
  messages, ``reward_model.ground_truth`` = the target text, ``extra_info`` (index, split).
* raw JSON (``rlla_4k_raw/*.json``, e.g. ``rlla_sft.json``): a list (or JSON lines) of
  ``{instruction, input, output}``; system = instruction, user = input, ground truth = output.

Both go through Hugging Face ``datasets`` (``Dataset.from_parquet`` / ``Dataset.from_json``),
which memory-maps and caches the Arrow conversion. Records whose ground truth is malformed
(not JSON inside ``<tool_call>``, no ``name``/``parameters``, no ``<tool_call>`` nor
``<response>``) or that miss a field are counted and skipped (``LoadedTasks.skip_reasons``).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

from toolrl_jax.data.task import (
    BadRecord,
    LoadedTasks,
    ToolTask,
    collect,
    parse_ground_truth_calls,
    parse_toolrl_tools,
)
from toolrl_jax.errors import DataError


def check_file(path: str | os.PathLike, what: str) -> pathlib.Path:
    """Returns ``path`` as a Path; raises DataError naming it if it is not a readable file."""
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what} file not found: {p} (pass --data PATH to an existing file)")
    return p


def _hf_dataset(path: pathlib.Path, kind: str):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets  # lazy: slow (seconds) and reads HF_DATASETS_OFFLINE at import

    datasets.disable_progress_bars()
    try:
        if kind == "parquet":
            return datasets.Dataset.from_parquet(str(path))
        return datasets.Dataset.from_json(str(path))
    except Exception as e:  # noqa: BLE001 - any reader failure is a data error for the user
        raise DataError(f"cannot read {path} as {kind}: {type(e).__name__}: {e}") from e


def _str_field(rec: Mapping[str, Any], key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise BadRecord(f"missing_{key}")
    return v


def task_from_messages(
    task_id: str, system: str, user: str, ground_truth: str, meta: dict[str, Any]
) -> ToolTask:
    """Builds a ToolTask from ToolRL's (system, user, ground truth) triple."""
    calls = parse_ground_truth_calls(ground_truth)
    return ToolTask(
        id=task_id,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        tools=parse_toolrl_tools(system),
        ground_truth=ground_truth,
        ground_truth_calls=calls,
        meta=meta,
    )


def _verl_record(i: int, rec: Mapping[str, Any], source: str) -> ToolTask:
    prompt = rec.get("prompt")
    if prompt is None or len(prompt) < 2:
        raise BadRecord("bad_prompt", "prompt must hold [system, user] messages")
    roles = [m.get("role") for m in prompt]
    if roles[0] != "system" or "user" not in roles:
        raise BadRecord("bad_prompt", f"roles {roles}")
    system = _str_field(prompt[0], "content")
    user = _str_field(prompt[roles.index("user")], "content")
    reward_model = rec.get("reward_model") or {}
    ground_truth = _str_field(reward_model, "ground_truth")
    extra = rec.get("extra_info") or {}
    index = extra.get("index", i)
    meta = {"source": "toolrl", "format": "verl", "file": source, "index": index}
    if rec.get("data_source") is not None:
        meta["data_source"] = rec["data_source"]
    if extra.get("split") is not None:
        meta["split"] = extra["split"]
    return task_from_messages(f"toolrl-{index}", system, user, ground_truth, meta)


def _raw_record(i: int, rec: Mapping[str, Any], source: str) -> ToolTask:
    system = _str_field(rec, "instruction")
    user = _str_field(rec, "input")
    output = _str_field(rec, "output")
    meta = {"source": "toolrl", "format": "raw", "file": source, "index": i}
    return task_from_messages(f"toolrl-raw-{i}", system, user, output, meta)


def load_toolrl_parquet(path: str | os.PathLike, limit: int | None = None) -> LoadedTasks:
    """Loads ToolRL's verl parquet (``prompt`` + ``reward_model.ground_truth``)."""
    p = check_file(path, "ToolRL parquet")
    ds = _hf_dataset(p, "parquet")
    for col in ("prompt", "reward_model"):
        if col not in ds.column_names:
            raise DataError(f"{p}: column '{col}' missing (expected ToolRL's verl parquet)")
    return collect(ds, lambda i, r: _verl_record(i, r, str(p)), str(p), limit)


def load_toolrl_json(path: str | os.PathLike, limit: int | None = None) -> LoadedTasks:
    """Loads ToolRL's raw ``{instruction, input, output}`` JSON (list or JSON lines)."""
    p = check_file(path, "ToolRL JSON")
    ds = _hf_dataset(p, "json")
    missing = {"instruction", "input", "output"} - set(ds.column_names)
    if missing and {"prompt", "reward_model"} <= set(ds.column_names):
        return collect(ds, lambda i, r: _verl_record(i, r, str(p)), str(p), limit)
    if missing:
        raise DataError(f"{p}: fields {sorted(missing)} missing (expected ToolRL's raw JSON)")
    return collect(ds, lambda i, r: _raw_record(i, r, str(p)), str(p), limit)


def load_toolrl(path: str | os.PathLike, limit: int | None = None) -> LoadedTasks:
    """Loads either ToolRL format, chosen by the file extension (``.parquet`` or JSON)."""
    p = check_file(path, "ToolRL data")
    if p.suffix == ".parquet":
        return load_toolrl_parquet(p, limit)
    return load_toolrl_json(p, limit)
