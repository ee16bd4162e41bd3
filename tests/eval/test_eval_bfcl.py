"""BFCL evaluation reproduces bfcl-eval's verdicts: ground truth scores 100%, wrong answers 0."""

import copy
import sys

import pytest

from toolrl_jax.data.bfcl import parse_call_string
from toolrl_jax.data.task import render_toolrl_output
from toolrl_jax.eval.bfcl import evaluate_bfcl, summarize_bfcl
from toolrl_jax.eval.calls import render_python_calls

AST_CATEGORIES = ["simple", "multiple", "parallel", "parallel_multiple"]
LIMIT = 20


def ground_truth(tasks):
    return [t.ground_truth for t in tasks]


def _perturb_value(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1000
    if isinstance(v, str):
        return "zzwrong " + v  # a prefix: BFCL parses JS/Java literals leniently at the end
    if isinstance(v, list):
        return v + ["zz wrong"]
    if isinstance(v, dict):
        return {**v, "zz_wrong": "x"}
    return "zz wrong"


def wrong_values(tasks):
    """Changes one argument value of the first ground-truth call (keys kept)."""
    outs = []
    for t in tasks:
        calls = copy.deepcopy(t.ground_truth_calls)
        args = calls[0]["arguments"]
        key = sorted(args)[0]
        args[key] = _perturb_value(args[key])
        outs.append(render_toolrl_output(calls))
    return outs


def wrong_names(tasks):
    calls = lambda t: [{**c, "name": c["name"] + "_v2"} for c in t.ground_truth_calls]  # noqa: E731
    return [render_toolrl_output(calls(t)) for t in tasks]


def test_ground_truth_scores_100_percent():
    r = evaluate_bfcl(ground_truth, AST_CATEGORIES, LIMIT)
    for cat, s in r["categories"].items():
        assert s["total"] == LIMIT, cat
        assert s["accuracy"] == 1.0, (cat, [e for e in r["entries"] if not e["valid"]][:2])
    for key in ("simple", "multiple", "parallel", "parallel_multiple", "non_live"):
        assert r["summary"][key] == 1.0


def test_ground_truth_in_python_call_syntax_scores_100_percent():
    def python_syntax(tasks):
        return [render_python_calls(t.ground_truth_calls) for t in tasks]

    r = evaluate_bfcl(python_syntax, ["simple_python", "multiple", "parallel", "parallel_multiple"], LIMIT, syntax="python")
    assert all(s["accuracy"] == 1.0 for s in r["categories"].values()), r["categories"]


@pytest.mark.parametrize("wrong", [wrong_values, wrong_names])
def test_wrong_answers_score_zero(wrong):
    r = evaluate_bfcl(wrong, AST_CATEGORIES, LIMIT)
    for cat, s in r["categories"].items():
        assert s["total"] == LIMIT and s["correct"] == 0, (cat, [e for e in r["entries"] if e["valid"]][:2])


def test_count_and_format_errors_are_invalid():
    def extra_call(tasks):
        return [render_toolrl_output(t.ground_truth_calls + t.ground_truth_calls[:1]) for t in tasks]

    r = evaluate_bfcl(extra_call, ["simple_python", "parallel"], 10)
    assert r["summary"]["simple"] == 0.0 and r["summary"]["parallel"] == 0.0
    r = evaluate_bfcl(lambda ts: ["<tool_call>\nnot json\n</tool_call>"] * len(ts), ["simple_python"], 5)
    assert {e["error_type"] for e in r["entries"]} == {"ast_decoder:decoder_failed"}
    r = evaluate_bfcl(lambda ts: [None] * len(ts), ["multiple"], 5)  # non-text output
    assert r["categories"]["multiple"]["correct"] == 0


def test_live_ast_ground_truth():
    r = evaluate_bfcl(ground_truth, ["live_simple", "live_parallel", "live_parallel_multiple"], 10)
    assert all(s["accuracy"] == 1.0 for s in r["categories"].values()), r["categories"]


def test_relevance_and_irrelevance():
    r = evaluate_bfcl(ground_truth, ["irrelevance", "live_irrelevance"], 10)
    assert r["summary"]["irrelevance"] == 1.0

    def call_first_function(tasks):
        return [render_toolrl_output([{"name": t.tools[0]["name"], "arguments": {}}]) for t in tasks]

    r = evaluate_bfcl(call_first_function, ["irrelevance", "live_relevance"], 10)
    assert r["categories"]["irrelevance"]["correct"] == 0
    assert r["categories"]["live_relevance"]["accuracy"] == 1.0  # any call counts
    r = evaluate_bfcl(lambda ts: ["<think> x </think>\n<response> no </response>"] * len(ts), ["live_relevance"], 10)
    assert r["categories"]["live_relevance"]["correct"] == 0


def _multi_turn_script(drop_last_turn=False):
    def predict(tasks):
        outs = []
        for t in tasks:
            m = t.meta
            turn_calls = m["turn_ground_truth"][m["turn_index"]]
            last = m["turn_index"] == len(m["turn_ground_truth"]) - 1
            docs = list(m["functions"]) + [f for fs in m["held_out_functions"].values() for f in fs]
            if m["step_index"] == 0 and turn_calls and not (drop_last_turn and last):
                outs.append(render_toolrl_output([parse_call_string(c, docs) for c in turn_calls]))
            else:
                outs.append(render_toolrl_output(response="Done."))
        return outs

    return predict


def test_multi_turn_ground_truth_and_wrong():
    cats = ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param"]
    r = evaluate_bfcl(_multi_turn_script(), cats, 4)
    assert all(s["accuracy"] == 1.0 for s in r["categories"].values()), [e for e in r["entries"] if not e["valid"]][:1]
    assert r["summary"]["multi_turn"] == 1.0
    r = evaluate_bfcl(_multi_turn_script(drop_last_turn=True), ["multi_turn_base"], 4)
    assert r["categories"]["multi_turn_base"]["correct"] == 0
    # bfcl-eval keeps backend instances in module globals; they are removed after the run
    utils = sys.modules["bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils"]
    assert not [k for k in vars(utils) if k.startswith("toolrl_jax_")]


def test_checker_imported_through_stub_only():
    evaluate_bfcl(ground_truth, ["simple_python"], 1)
    stub = sys.modules["bfcl_eval.constants.model_config"]
    assert stub.MODEL_CONFIG_MAPPING["any/model"].underscore_to_dot is False
    assert not any(m.startswith("bfcl_eval.model_handler") for m in sys.modules)
    assert "bfcl_eval.constants.eval_config" not in sys.modules  # would create folders in site-packages


def test_summary_formulas_hand_computed():
    cats = {
        "simple_python": {"accuracy": 0.9, "total": 400},
        "simple_java": {"accuracy": 0.6, "total": 100},
        "simple_javascript": {"accuracy": 0.3, "total": 50},
        "multiple": {"accuracy": 0.8, "total": 200},
        "parallel": {"accuracy": 0.7, "total": 200},
        "parallel_multiple": {"accuracy": 0.5, "total": 200},
        "live_simple": {"accuracy": 0.5, "total": 100},
        "live_multiple": {"accuracy": 1.0, "total": 300},
        "irrelevance": {"accuracy": 0.2, "total": 240},
        "live_irrelevance": {"accuracy": 0.4, "total": 800},
        "live_relevance": {"accuracy": 0.75, "total": 16},
    }
    s = summarize_bfcl(cats)
    assert s["simple"] == pytest.approx(0.6)  # (0.9 + 0.6 + 0.3) / 3, unweighted
    assert s["non_live"] == pytest.approx((0.6 + 0.8 + 0.7 + 0.5) / 4)
    assert s["live"] == pytest.approx((0.5 * 100 + 1.0 * 300) / 400)  # weighted by count
    assert s["irrelevance"] == pytest.approx(0.3)
    assert s["relevance"] == 0.75
    assert s["multi_turn"] is None
    assert s["overall"] == pytest.approx((0.65 + 0.875) / 2) and s["overall_groups"] == ["non_live", "live"]
