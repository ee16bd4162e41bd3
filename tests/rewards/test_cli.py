"""`toolrl-jax reward` on small JSONL files (in-process main() calls)."""

from __future__ import annotations

import json

import pytest

from toolrl_jax.cli import main

GT = '<think> g </think>\n<tool_call>\n{"name": "A", "parameters": {"x": "1", "y": 2}}\n</tool_call>'


def _line(i, completion, **extra):
    return json.dumps({"id": i, "completion": completion, "ground_truth": GT, **extra})


def test_scores_good_lines_and_reports_bad_ones(tmp_path, capsys):
    good = '<think> x </think>\n<tool_call>\n{"name": "A", "parameters": {"x": "1", "y": 2}}\n</tool_call>'
    partial = '<think> x </think>\n<tool_call>\n{"name": "A", "parameters": {"x": 1, "y": 2}}\n</tool_call>'
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([_line("a", good), "{not json", _line("b", partial, step=40),
                              json.dumps({"id": "c", "completion": "x"}), ""]) + "\n")
    out = tmp_path / "out.jsonl"
    rc = main(["reward", "--input", str(src), "--output", str(out), "--compat", "toolrl"])
    err = capsys.readouterr().err
    assert rc == 1  # some lines were skipped
    assert f"{src}:2:" in err and "not JSON" in err
    assert f"{src}:4:" in err and "missing ground_truth" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0] == {"id": "a", "total": 4.0, "format": 1.0, "correctness": 3.0, "length": 0.0}
    # x=1 (int) vs "1": names 1, keys 1, one value -> score 3 of S_max 4 -> 6 * 3 / 4 - 3 = 1.5
    assert rows[1]["correctness"] == pytest.approx(1.5, abs=1e-6)


def test_missing_file_is_one_line_error(tmp_path, capsys):
    rc = main(["reward", "--input", str(tmp_path / "absent.jsonl")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not found" in err


def test_check_against_reference_on_real_cases(tmp_path, capsys, shared_data):
    from ._cases import generate_cases

    cases = generate_cases(n=60, seed=7, data_dir=shared_data / "toolrl")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "completion": c, "ground_truth": g, "step": (i * 7) % 120}) + "\n"
                           for i, (c, g) in enumerate(cases)))
    rc = main(["reward", "--input", str(src), "--compat", "toolrl", "--variant", "dynamic_length", "--check"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"{len(cases)}/{len(cases)} lines agree" in captured.err
    assert len(captured.out.splitlines()) == len(cases)
