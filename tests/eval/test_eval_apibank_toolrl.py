"""API-Bank exact match per level, ToolRL-test exact match, call decoding, report tables."""

import copy
import json

import pytest

from toolrl_jax.data import load_toolrl
from toolrl_jax.data.task import ToolTask, render_toolrl_output
from toolrl_jax.eval.apibank import calls_match, evaluate_apibank
from toolrl_jax.eval.calls import parse_calls
from toolrl_jax.eval.report import format_table, print_report, write_json
from toolrl_jax.eval.toolrl import evaluate_toolrl, exact_match


def _files(shared_data):
    return [shared_data / "apibank" / "level-1-api_processed.json", shared_data / "apibank" / "level-2-api_processed.json"]


def gt(tasks):
    return [t.ground_truth for t in tasks]


# ----------------------------------------------------------------------------------- API-Bank


def test_apibank_ground_truth_is_100_percent(shared_data):
    r = evaluate_apibank(gt, _files(shared_data))
    assert r["levels"]["level-1"] == {"accuracy": 1.0, "correct": 399, "total": 399}
    assert r["levels"]["level-2"] == {"accuracy": 1.0, "correct": 67, "total": 67}
    assert r["overall"]["total"] == 466 and r["overall"]["accuracy"] == 1.0


def test_apibank_perturbed_scores_lower(shared_data):
    def perturb_every_other(tasks):
        outs = []
        for t in tasks:
            calls = copy.deepcopy(t.ground_truth_calls)
            if t.meta["index"] % 2:  # the case's index in its file
                k = sorted(calls[0]["arguments"])[0] if calls[0]["arguments"] else None
                if k is None:
                    calls[0]["name"] += "X"
                else:
                    calls[0]["arguments"][k] = str(calls[0]["arguments"][k]) + "X"
            outs.append(render_toolrl_output(calls))
        return outs

    r = evaluate_apibank(perturb_every_other, _files(shared_data), limit=40, batch_size=7)
    # hand count: per file, the first 40 cases with every odd-indexed one wrong
    assert r["overall"]["total"] == 80 and r["overall"]["correct"] == 40
    none = evaluate_apibank(lambda ts: ["<think> a </think>\n<response> b </response>"] * len(ts), _files(shared_data), limit=10)
    assert none["overall"]["correct"] == 0 and {e["error_type"] for e in none["entries"]} == {"no_call"}


def test_apibank_hand_checked_cases(tmp_path):
    cases = [
        {"system": "s", "user": "u", "answer": [{"name": "A", "parameters": {"x": "1", "y": "b"}}]},
        {"system": "s", "user": "u", "answer": {"name": "B", "parameters": {}}},
        {"system": "s", "user": "u", "answer": {"name": "C", "parameters": {"n": "5"}}},
    ]
    p = tmp_path / "level-1-mine.json"
    p.write_text(json.dumps(cases))
    outputs = [
        # extra call before the right one: still correct ("any predicted call")
        '<think> t </think>\n<tool_call>\n{"name": "Z", "parameters": {}}\n{"name": "A", "parameters": {"y": "b", "x": "1"}}\n</tool_call>',
        '<think> t </think>\n<tool_call>\n{"name": "B", "parameters": {}}\n</tool_call>',
        '<think> t </think>\n<tool_call>\n{"name": "C", "parameters": {"n": 5}}\n</tool_call>',  # 5 != "5"
    ]
    r = evaluate_apibank(lambda ts: outputs[: len(ts)], p)
    assert [e["valid"] for e in r["entries"]] == [True, True, False]
    assert r["levels"] == {"level-1": {"accuracy": 2 / 3, "correct": 2, "total": 3}}
    lenient = evaluate_apibank(lambda ts: outputs[: len(ts)], p, equality="lenient")
    assert lenient["overall"]["correct"] == 3


def test_calls_match_needs_distinct_predictions():
    want = [{"name": "A", "arguments": {"x": 1}}, {"name": "A", "arguments": {"x": 1}}]
    assert not calls_match(want, [{"name": "A", "arguments": {"x": 1}}])
    assert calls_match(want, [{"name": "A", "arguments": {"x": 1}}] * 2)


# ----------------------------------------------------------------------------------- ToolRL test


def test_toolrl_test_split_exact_match(shared_data):
    tasks = load_toolrl(shared_data / "toolrl" / "rlla_test.parquet").tasks
    r = evaluate_toolrl(gt, tasks, reward_fn=None)
    assert r["exact_match"] == 1.0 and r["total"] == 80
    r = evaluate_toolrl(lambda ts: ["<think> hi </think>\n<response> hello </response>"] * len(ts), tasks, reward_fn=None)
    assert r["exact_match"] == pytest.approx(9 / 80)  # the 9 response-only cases


def test_exact_match_rules():
    t = ToolTask(
        id="x", messages=[], tools=[], ground_truth="",
        ground_truth_calls=[{"name": "A", "arguments": {"x": "1"}}, {"name": "B", "arguments": {"z": 3}}],
    )
    ok = render_toolrl_output([{"name": "B", "arguments": {"z": 3.0}}, {"name": "A", "arguments": {"x": "1"}}])
    assert exact_match(t, ok)  # order free, 3 == 3.0 as in Python
    assert not exact_match(t, render_toolrl_output([{"name": "A", "arguments": {"x": 1}}, {"name": "B", "arguments": {"z": 3}}]))
    assert not exact_match(t, render_toolrl_output([{"name": "A", "arguments": {"x": "1"}}]))
    assert not exact_match(t, ok.replace("</tool_call>", "").replace("<tool_call>", "<tool_call>\n{"))


def test_reward_fn_is_used():
    tasks = [ToolTask(id=str(i), messages=[], tools=[], ground_truth=f"g{i}", ground_truth_calls=[]) for i in range(3)]

    def fake_reward(completions, truths):
        assert truths == ["g0", "g1", "g2"]
        return {"reward": [1.0, 2.0, 3.0], "format": [1, 1, 0]}

    r = evaluate_toolrl(lambda ts: ["c"] * len(ts), tasks, reward_fn=fake_reward, batch_size=2)
    assert r["reward"] == {"reward": 2.0, "format": pytest.approx(2 / 3)}
    assert [e["reward"] for e in r["entries"]] == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "text,expected",
    [
        ('<think> a </think>\n<tool_call>\n{"name": "f", "parameters": {"x": 1}}\n{"name": "g", "parameters": {}}\n</tool_call>',
         [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]),
        ('<tool_call>\n{\n  "name": "f",\n  "arguments": {"x": 1}\n}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',
         [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]),
        ("[f(x=1, y='a'), mod.g(z=[1, 2])]", [{"name": "f", "arguments": {"x": 1, "y": "a"}}, {"name": "mod.g", "arguments": {"z": [1, 2]}}]),
        ("```python\nf(x=True)\n```", [{"name": "f", "arguments": {"x": True}}]),
        ("<think> I will use <tool_call> tags </think>\n<response> none needed </response>", []),
        ("The answer is 42.", []),
        ("", []),
        ('<tool_call>\n{"name": "f", "parameters": {"x": 1}\n</tool_call>', None),
        ("<tool_call>\n{\"name\": \"f\"", None),
    ],
)
def test_parse_calls(text, expected):
    assert parse_calls(text) == expected


def test_parse_calls_python_only_mode():
    assert parse_calls("[f(x=os.system('x'))]", "python") is None  # not a literal: never evaluated
    assert parse_calls("hello", "python") is None
    assert parse_calls("[]", "python") == []


# ----------------------------------------------------------------------------------- report


def test_report_tables_and_json(tmp_path, capsys):
    bfcl = {
        "benchmark": "bfcl", "limit": 20, "categories": {},
        "summary": {"overall": 0.5, "non_live": 0.625, "simple": 0.5, "multiple": 0.75, "parallel": None,
                    "parallel_multiple": None, "live": 0.375, "multi_turn": None, "relevance": None,
                    "irrelevance": 1.0, "overall_groups": ["non_live", "live"]},
    }
    text = format_table({"before": bfcl, "after": bfcl})
    header, sep, row1, row2 = text.splitlines()[1:5]
    assert header.split("|")[1].strip() == "Model" and "Parallel Multiple" in header
    cells = [c.strip() for c in row1.split("|")[1:-1]]
    assert cells == ["before", "50.00", "62.50", "50.00", "75.00", "-", "-", "37.50", "-", "-", "100.00"]
    assert "Overall = mean of the evaluated groups: non_live, live" in text
    api = {"benchmark": "apibank", "levels": {"level-1": {"accuracy": 0.5}, "level-2": {"accuracy": 0.25}},
           "overall": {"accuracy": 0.45}}
    out = print_report(api, "m", output=tmp_path / "sub" / "r.json")
    assert "| m     |   50.00 |   25.00 |   45.00 |" in out
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["model"] == "m"
    assert "API-Bank" in capsys.readouterr().out
    p = write_json({"x": float("nan"), "y": [1, 2]}, tmp_path / "n.json")
    assert json.loads(p.read_text()) == {"x": None, "y": [1, 2]}


def test_default_reward_is_the_training_reward():
    """Ground truth earns the maximum 4 = format 1 + correctness 3; answering with <response>
    where calls are expected earns -3 (format 0, correctness -3; docs/methods.md section 1, worked examples)."""
    from toolrl_jax.data import generate_tasks

    tasks = generate_tasks(12, seed=2)
    r = evaluate_toolrl(gt, tasks)
    assert r["reward"]["reward"] == pytest.approx(4.0) and r["reward"]["format"] == pytest.approx(1.0)
    r = evaluate_toolrl(lambda ts: ["<think> x </think>\n<response> y </response>"] * len(ts), tasks)
    for t, e in zip(tasks, r["entries"]):
        if t.ground_truth_calls:
            assert (e["reward"], e["format"], e["correctness"]) == pytest.approx((-3.0, 0.0, -3.0))
        else:
            assert e["format"] == pytest.approx(1.0) and e["exact_match"]


def test_run_benchmark_dispatch(shared_data):
    from toolrl_jax.errors import DataError
    from toolrl_jax.eval.run import run_benchmark

    r = run_benchmark("apibank", gt, data=[shared_data / "apibank" / "level-2-api_processed.json"], limit=5)
    assert r["overall"] == {"accuracy": 1.0, "correct": 5, "total": 5}
    r = run_benchmark("bfcl", gt, categories="parallel", limit=3)
    assert r["categories"]["parallel"]["accuracy"] == 1.0
    with pytest.raises(DataError, match="needs --data"):
        run_benchmark("apibank", gt)
    with pytest.raises(DataError, match="did you mean 'bfcl'"):
        run_benchmark("bfc", gt)
