"""Rewards never leave their range and never hide a missing dependency (issue 10, item 7)."""

import json
import random
import sys

import numpy as np
import pytest

from toolrl_jax.errors import ConfigError
from toolrl_jax.rewards.config import ToolRLRewardConfig
from toolrl_jax.rewards.math import MathVerifier, retool_reward
from toolrl_jax.rewards.reference import reference_reward
from toolrl_jax.rewards.toolrl import score_texts


def test_missing_math_verify_is_an_error_not_minus_one(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # `import math_verify` now fails
    with pytest.raises(ConfigError, match="math-verify"):
        retool_reward(["\\boxed{2}"], ["2"])
    for backend in ("thread", "process"):
        with pytest.raises(ConfigError, match="pip install math-verify"):
            MathVerifier(backend=backend)


def test_broken_math_verify_import_is_an_error_in_the_thread_backend(monkeypatch):
    import toolrl_jax.rewards._math_worker as worker

    def broken(answer, gold):
        raise ImportError("No module named 'sympy'")

    monkeypatch.setattr(worker, "check", broken)
    with MathVerifier(backend="thread") as verifier:
        with pytest.raises(ConfigError, match="sympy"):
            retool_reward(["\\boxed{2}"], ["2"], verifier=verifier)


def _call(params: dict) -> str:
    return '<think>x</think>\n<tool_call>\n' + json.dumps({"name": "f", "parameters": params}) + "\n</tool_call>"


COLLIDING_KEYS = ["a", " a", "a ", "1", " 1", "1.0", "true", "True", " true"]
VALUES = [1, "1", " 1", 1.0, True, "true", "x", " x"]


def _cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = [({"a": "1", " a": "1", "a ": 1, "b": 2}, {"a": 1}),  # the double count
           ({"a": 1, " a": 1, "a  ": 1}, {"a": 1, " a": 1})]
    for _ in range(n - len(out)):
        gt = {rng.choice(COLLIDING_KEYS): rng.choice(VALUES) for _ in range(rng.randint(1, 6))}
        pd = {rng.choice(COLLIDING_KEYS): rng.choice(VALUES) for _ in range(rng.randint(0, 6))}
        out.append((gt, pd))
    return out


@pytest.mark.parametrize("matching", ["greedy", "optimal"])
def test_lenient_key_collisions_stay_in_range_and_match_the_reference(matching):
    cases = _cases(64)
    completions = [_call(pd) for _, pd in cases]
    truths = [_call(gt) for gt, _ in cases]
    config = ToolRLRewardConfig(equality="lenient", matching=matching)
    got = score_texts(completions, truths, config=config)
    assert np.all(got["correctness"] >= -3.0) and np.all(got["correctness"] <= 3.0)
    assert np.all(got["total"] <= 4.0)
    for i, (comp, gt) in enumerate(zip(completions, truths)):
        ref = reference_reward(comp, gt, 0, equality="lenient", matching=matching)
        assert got["correctness"][i] == pytest.approx(ref[2], abs=1e-5), (cases[i], ref)
    # the case: one matching key out of two distinct ones, not 5.4
    assert got["correctness"][0] == pytest.approx(6 * (1 + 1 / 2 + 1) / 4 - 3)
