"""ReTool outcome (math-verify with our timeout), OTC, FTRL, DAPO overlong, Tool-Star, compose."""

from __future__ import annotations

import concurrent.futures as cf
import math
import time

import jax
import numpy as np
import pytest

from toolrl_jax.errors import ConfigError
from toolrl_jax.rewards import _math_worker
from toolrl_jax.rewards.compose import ComposeConfig, compose_rewards
from toolrl_jax.rewards.ftrl import ftrl_turn_counts, ftrl_turn_reward
from toolrl_jax.rewards.math import (
    MathVerifier,
    OutcomeRewardConfig,
    extract_boxed,
    outcome_reward,
    retool_reward,
)
from toolrl_jax.rewards.otc import OTCConfig, otc_group_min_calls, otc_reward, otc_tool_reward
from toolrl_jax.toolcalls.parse import ToolCall
from toolrl_jax.rewards.shaping import (
    OverlongConfig,
    ToolStarConfig,
    count_distinct_tools,
    dapo_overlong_penalty,
    tool_star_reward,
)


# ------------------------------------------------------------------------ ReTool
@pytest.mark.parametrize("text,want", [
    ("so \\boxed{12}.", "12"),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{{a}{b}}", "{a}{b}"),
    ("\\fbox{7}", "7"),
    ("$\\boxed 5$", "5"),
    ("\\boxed{unclosed", None),
    ("no box", None),
    (None, None),
])
def test_extract_boxed(text, want):
    assert extract_boxed(text) == want


COMPLETIONS = ["<code>...</code> The answer is \\boxed{12}.", "\\boxed{0.5}", "\\boxed{4}", "no answer",
               "\\boxed{x^2 + 1}"]
GOLDS = ["12", "\\frac{1}{2}", "3", "3", "1 + x^2"]
EXPECTED = np.array([1, 1, -1, -1, 1], np.float32)


def test_retool_reward_thread_backend_and_thread_safety():
    with MathVerifier(backend="thread", workers=2, timeout_s=20) as v:
        np.testing.assert_array_equal(retool_reward(COMPLETIONS, GOLDS, verifier=v), EXPECTED)
        with cf.ThreadPoolExecutor(4) as ex:  # callers on several threads share one verifier
            outs = list(ex.map(lambda _: retool_reward(COMPLETIONS, GOLDS, verifier=v), range(4)))
    for o in outs:
        np.testing.assert_array_equal(o, EXPECTED)


def test_thread_backend_times_out(monkeypatch):
    def slow(answer, gold):
        time.sleep(3)
        return True

    monkeypatch.setattr(_math_worker, "check", slow)
    t0 = time.perf_counter()
    with MathVerifier(backend="thread", workers=1, timeout_s=0.2) as v:
        out = v.verify_many(["1", "2"], ["1", "2"])
    assert not out.any()
    assert time.perf_counter() - t0 < 5.0  # the 3 s checks were abandoned, not awaited


def test_process_backend_scores_and_survives_timeouts():
    with MathVerifier(backend="process", workers=2, timeout_s=20) as v:
        np.testing.assert_array_equal(retool_reward(COMPLETIONS, GOLDS, verifier=v), EXPECTED)
        v.timeout_s = 1e-4  # far too short: every check is interrupted and scores as wrong
        assert not v.verify_many(["12"], ["12"]).any()
        v.timeout_s = 20.0  # the pool still works afterwards
        assert v.verify_many(["12"], ["12"]).all()


def test_outcome_reward():
    out = outcome_reward(np.array([True, False]))
    np.testing.assert_array_equal(np.asarray(out), [1.0, -1.0])
    out = outcome_reward(np.array([True, False]), OutcomeRewardConfig(correct=2.0, wrong=0.0))
    np.testing.assert_array_equal(np.asarray(out), [2.0, 0.0])


# ------------------------------------------------------------------------ OTC
def _otc_ref(m, n, c=1.0):
    if m == 0 and n == 0:
        f = 0
    elif n == 0:
        f = m
    else:
        f = 2 * n * m / (m + n)
    if f == 0 and n == 0:
        return 1.0
    if n == 0:
        return math.cos(m * math.pi / (2 * m + c))
    return math.sin(f * math.pi / (2 * n))


def test_otc_tool_reward_matches_formula():
    calls = np.array([0, 1, 2, 3, 5, 2, 0, 4, 1, 3])
    correct = np.array([1, 1, 0, 1, 0, 0, 0, 0, 1, 1], bool)
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    n = np.asarray(otc_group_min_calls(calls, correct, groups))
    np.testing.assert_array_equal(n, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    c = 1.5
    got = np.asarray(otc_tool_reward(calls, correct, groups, OTCConfig(c=c)))
    want = [_otc_ref(m, k, c) for m, k in zip(calls, n)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[8] == pytest.approx(1.0)  # m == n: the peak
    assert got[9] < 1.0  # more calls than the best correct sample
    ppo = np.asarray(otc_tool_reward(calls, correct, groups, OTCConfig(mode="ppo", c=c)))
    np.testing.assert_allclose(ppo, [_otc_ref(m, 0, c) for m in calls], atol=1e-6)


def test_otc_reward_is_multiplicative():
    calls, groups = np.array([1, 3, 2]), np.array([0, 0, 0])
    corr = np.array([1.0, 1.0, 0.0])
    out = np.asarray(otc_reward(calls, corr, groups, config=OTCConfig(alpha=2.0)))
    np.testing.assert_allclose(out, [2.0, 2.0 * _otc_ref(3, 1), 0.0], atol=1e-6)


# ------------------------------------------------------------------------ FTRL
def test_ftrl_counts_and_rewards():
    goals = [ToolCall("search", {"q": "a"}), ToolCall("book", {"id": 1})]
    s, k, left = ftrl_turn_counts([ToolCall("search", {"q": "a"}), ToolCall("search", {"q": "a"}),
                                   ToolCall("noise", {})], goals)
    assert (s, k, left) == (1, 3, [ToolCall("book", {"id": 1})])
    s2, k2, left2 = ftrl_turn_counts([ToolCall("book", {"id": 1.0})], left)  # strict: 1 == 1.0
    assert (s2, k2, left2) == (1, 1, [])
    r = np.asarray(ftrl_turn_reward(np.array([3, 1, 0, 0]), np.array([1, 1, 0, 0]),
                                    np.array([False, False, True, True]), np.array([0, 0, 0, 2])))
    np.testing.assert_allclose(r, [2 * 1 / 4, 2 * 1 / 2, 1.0, 1 / 3], atol=1e-6)


# ------------------------------------------------------------------------ shaping
def test_dapo_overlong():
    cfg = OverlongConfig(max_length=100, cache_length=20)
    out = np.asarray(dapo_overlong_penalty(np.array([0, 80, 90, 100, 101]), cfg))
    np.testing.assert_allclose(out, [0, 0, -0.5, -1.0, -1.0], atol=1e-6)
    with pytest.raises(ConfigError):
        OverlongConfig(max_length=10, cache_length=20)


def test_tool_star():
    out = tool_star_reward(np.array([False, True, True, True]), np.array([1.0, 0.0, 0.6, 0.6]),
                           np.array([2, 2, 1, 2]), ToolStarConfig())
    np.testing.assert_allclose(np.asarray(out), [-1.0, 0.0, 0.6, 0.7], atol=1e-6)
    assert count_distinct_tools("<search>q</search><result>r</result><python>x</python>") == 2
    assert count_distinct_tools("<python>x</python><python>y</python>") == 1


# ------------------------------------------------------------------------ compose
def test_compose_weighted_sum_jits():
    cfg = ComposeConfig.from_mapping({"toolrl": 1.0, "overlong": 0.5})
    comps = {"toolrl": np.array([4.0, -3.0]), "overlong": np.array([0.0, -1.0]), "unused": np.array([9, 9])}
    total, parts = jax.jit(compose_rewards, static_argnames="config")(comps, config=cfg)
    np.testing.assert_allclose(np.asarray(total), [4.0, -3.5])
    np.testing.assert_allclose(np.asarray(parts["overlong"]), [0.0, -0.5])
    with pytest.raises(ConfigError, match="not computed"):
        compose_rewards({"toolrl": np.zeros(2)}, cfg)
    with pytest.raises(ConfigError):
        ComposeConfig.from_mapping({})
