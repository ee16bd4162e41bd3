"""`reward` input checks (issue 10, item 8): steps beyond int32, ground truths beyond the static
shape and NaN ids are handled per line, never with a traceback or non-standard JSON."""

import json

import pytest

from toolrl_jax.cli import main

GT = '<think> g </think>\n<tool_call>\n{"name": "A", "parameters": {"x": "1"}}\n</tool_call>'
GOOD = '<think> x </think>\n<tool_call>\n{"name": "A", "parameters": {"x": "1"}}\n</tool_call>'


def _big_gt(calls: int, args: int = 1) -> str:
    lines = [json.dumps({"name": "A", "parameters": {f"k{j}": j for j in range(args)}}) for _ in range(calls)]
    return "<think> g </think>\n<tool_call>\n" + "\n".join(lines) + "\n</tool_call>"


def test_bad_steps_big_ground_truths_and_nan_ids(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([
        json.dumps({"id": "ok", "completion": GOOD, "ground_truth": GT, "step": 2**31 - 1}),
        json.dumps({"id": "huge_step", "completion": GOOD, "ground_truth": GT, "step": 10**12}),
        json.dumps({"id": "calls", "completion": GOOD, "ground_truth": _big_gt(65)}),
        json.dumps({"id": "args", "completion": GOOD, "ground_truth": _big_gt(1, 65)}),
        '{"id": NaN, "completion": %s, "ground_truth": %s}' % (json.dumps(GOOD), json.dumps(GT)),
        '{"id": [Infinity, 1], "completion": %s, "ground_truth": %s}' % (json.dumps(GOOD), json.dumps(GT)),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    rc = main(["reward", "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert f"{src}:2: step must be an integer in [0, 2147483647]" in err
    assert f"{src}:3: ground_truth has 65 calls" in err and f"{src}:4: ground_truth has 1 calls / 65" in err
    assert "skipped 3" in err
    text = out.read_text()
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
            for line in text.splitlines()]
    assert [r["id"] for r in rows] == ["ok", "NaN", ["Infinity", 1]]
    assert all(r["total"] == 4.0 for r in rows)


@pytest.mark.parametrize("step", ["1000000000000", "-1", "2147483648"])
def test_step_flag_out_of_int32_range(tmp_path, step, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "completion": GOOD, "ground_truth": GT}) + "\n")
    with pytest.raises(SystemExit) as info:
        main(["reward", "--input", str(src), "--step", step])
    assert info.value.code == 2 and "--step" in capsys.readouterr().err
