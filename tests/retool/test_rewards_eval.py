"""ReTool's outcome reward (needs math-verify: no skip), code-use shaping, math eval metrics."""

from __future__ import annotations

import numpy as np
import pytest

from toolrl_jax.data.math import math_task
from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.eval.math import MathCompletion, evaluate_math, format_math_table
from toolrl_jax.rewards.code_use import (
    CodeUseConfig,
    cell_counts,
    code_use_reward,
    interpreter_blocks,
)
from toolrl_jax.rewards.math import MathVerifier, retool_reward
from toolrl_jax.train.rewards import REWARD_COMPONENTS, RewardConfig, RewardContext

FAIL = "Traceback (most recent call last):\nNameError: x\nError: the cell failed (exit code 1)"


def block(text):
    return f"<code>\n```python\nprint(1)\n```\n</code>\n<interpreter>\n{text}\n</interpreter>\n"


def test_correct_boxed_answer_scores_plus_one():
    """Fails (no skip) when math-verify is not installed: then every answer would score -1."""
    completions = ["so \\boxed{43}.", "\\boxed{-\\frac{14}{3}}", "\\boxed{0.5}", "\\boxed{44}", "no box"]
    golds = ["43", "-14/3", "\\frac{1}{2}", "43", "43"]
    # generous timeout: the first check imports math-verify (sympy) inside the verifier's thread
    with MathVerifier(backend="thread", timeout_s=120) as verifier:
        rewards = retool_reward(completions, golds, verifier=verifier)
    assert rewards.tolist() == [1.0, 1.0, 1.0, -1.0, -1.0]


def test_retool_component_logs_pass_at_1_and_code_use_per_row():
    """The trainer's ``retool`` component: +1 / -1, and the parts whose means are pass@1 and the
    code-use share (what training and its held-out evaluation log per step)."""
    import math_verify  # noqa: F401  first import in this thread, not inside a verifier thread

    tasks = [math_task(str(i), "q", "43", "test") for i in range(3)]
    ctx = RewardContext(trajectory=None, tasks=tasks, group_ids=np.zeros(3, np.int32), step=0,
                        tokenizer=None, config=RewardConfig(), max_new_tokens=8)
    ctx.__dict__["completion_texts"] = [block("43") + "\\boxed{43}", "\\boxed{43}",
                                        block(FAIL) + "\\boxed{42}"]
    out = REWARD_COMPONENTS.get("retool")(ctx, RewardConfig().retool)
    assert np.asarray(out.values).tolist() == [1.0, 1.0, -1.0]
    assert out.parts["correct"].tolist() == [1.0, 1.0, 0.0]
    assert out.parts["code"].tolist() == [1.0, 0.0, 1.0]


def test_code_use_shaping_formula():
    texts = [block("42"), block(FAIL) + block("1"), block(FAIL) * 3, "no code"]
    counts = cell_counts(texts)
    assert counts.cells.tolist() == [1, 2, 3, 0] and counts.failed.tolist() == [0, 1, 3, 0]
    r = code_use_reward(np.array([True, True, False, True]), counts.cells, counts.failed)
    np.testing.assert_allclose(np.asarray(r), [0.1, 0.1 - 0.1 * 0.5, -0.1, 0.0], rtol=1e-6)
    r = code_use_reward(np.array([False]), np.array([4]), np.array([1]),
                        CodeUseConfig(bonus=1.0, penalty=2.0))
    np.testing.assert_allclose(np.asarray(r), [-0.5])
    with pytest.raises(ConfigError):
        CodeUseConfig(bonus=-1.0)
    assert interpreter_blocks("<interpreter>\na\n</interpreter><interpreter>b") == ["a"]


def test_evaluate_math_metrics_equal_hand_computed_values():
    tasks = [math_task("a", "q0", "43", "test"), math_task("b", "q1", "7/3", "test")]
    scripted = {
        0: [MathCompletion(block("43") + "\\boxed{43}", 10), MathCompletion("\\boxed{2}", 20)],
        1: [MathCompletion(block(FAIL) + block("43") + "\\boxed{43}", 30),
            MathCompletion("\\boxed{\\frac{7}{3}}", 40)],
    }
    calls = []

    def generate(ts, sample):
        calls.append((tuple(t.id for t in ts), sample))
        return scripted[sample]

    res = evaluate_math(generate, tasks, samples=2)
    assert calls == [(("a", "b"), 0), (("a", "b"), 1)]
    # task a: 2/2 correct, task b: 1/2 -> pass@1 = (1 + 0.5) / 2
    assert res["pass@1"] == pytest.approx(0.75)
    assert res["code_use"] == pytest.approx(2 / 4)
    assert res["code_calls"] == pytest.approx((1 + 0 + 2 + 0) / 4)
    assert res["code_pass_rate"] == pytest.approx(2 / 3)
    assert res["response_tokens"] == pytest.approx(25.0)
    assert [e["pass@1"] for e in res["entries"]] == [1.0, 0.5]
    assert res["entries"][1]["samples"][1]["boxed"] == "\\frac{7}{3}"
    table = format_math_table({"m": res})
    assert "| m " in table and "75.00" in table and "66.67" in table


def test_evaluate_math_without_code_and_plain_strings():
    tasks = [math_task("a", "q", "1", "test")]
    res = evaluate_math(lambda ts, k: ["\\boxed{1}"], tasks)
    assert res["pass@1"] == 1.0 and res["code_use"] == 0.0 and res["code_pass_rate"] is None
    assert res["response_tokens"] is None and res["response_chars"] == len("\\boxed{1}")
    with pytest.raises(DataError, match="samples"):
        evaluate_math(lambda ts, k: [], tasks, samples=0)


def test_train_summary_table_shows_the_math_columns_the_run_has():
    """``toolrl-jax train``'s closing table: a ReTool run shows pass@1 and code use (not the
    tool-call columns it has no values for); a ToolRL run keeps its four columns."""
    from toolrl_jax.commands.train import format_summary

    math_eval = {"reward": -1.0, "reward/retool_correct": 0.0, "reward/retool_code": 0.0}
    after = {"reward": 0.5, "reward/retool_correct": 0.75, "reward/retool_code": 0.875,
             "response_length": 90.0}
    text = format_summary({"before": math_eval, "after": after}, "runs/x")
    head, _, before_row, after_row = text.splitlines()[1:5]
    assert head.split()[-5:] == ["reward", "pass@1", "code", "use", "tokens"]
    assert "format" not in head
    assert after_row.split()[-4:] == ["0.50", "0.75", "0.88", "90.00"]
    assert before_row.split()[-4:] == ["-1.00", "0.00", "0.00", "-"]
    tool = {"reward": 1.5, "format": 1.0, "correctness": 0.5, "exact_match": 0.25}
    head, _, row = format_summary({"after_sft": tool}, "runs/y").splitlines()[1:4]
    assert "exact match" in head and "pass@1" not in head
    assert row.split()[-4:] == ["1.50", "1.00", "0.50", "0.25"]
