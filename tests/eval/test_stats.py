"""Bootstrap intervals against scipy's percentile bootstrap, coverage, and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from toolrl_jax.errors import DataError
from toolrl_jax.eval.stats import bootstrap_ci, paired_bootstrap


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(1)
    x = (rng.random(200) < 0.35).astype(float)
    ours = bootstrap_ci(x, num_resamples=20000, seed=3)
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                                confidence_level=0.95, random_state=5).confidence_interval
    assert ours.estimate == pytest.approx(x.mean())
    assert ours.low == pytest.approx(ref.low, abs=0.01)
    assert ours.high == pytest.approx(ref.high, abs=0.01)
    assert ours.n == 200


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for rep in range(200):
        x = (rng.random(150) < 0.3).astype(float)
        ci = bootstrap_ci(x, num_resamples=1000, seed=rep)
        hits += ci.low <= 0.3 <= ci.high
    assert 0.88 <= hits / 200 <= 0.99


def test_constant_scores_give_a_point_interval():
    ci = bootstrap_ci(np.ones(50))
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)
    assert ci.format() == "100.0 [100.0, 100.0]"


def test_paired_bootstrap_hand_cases():
    a = np.array([1, 0, 1, 1, 0, 1], float)
    same = paired_bootstrap(a, a)
    assert (same.estimate, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    better = paired_bootstrap(np.ones(40), np.zeros(40))
    assert (better.estimate, better.low, better.high, better.p_value) == (1.0, 1.0, 1.0, 0.0)
    # 3 wins, 1 loss of 6 items: mean difference 2/6
    b = np.array([0, 0, 0, 1, 0, 1], float)
    assert paired_bootstrap(a, b).estimate == pytest.approx(2 / 6)


def test_paired_interval_is_tighter_than_independent_ones_on_correlated_items():
    rng = np.random.default_rng(2)
    difficulty = rng.random(300)
    a = (difficulty < 0.55).astype(float)   # a solves every item b solves, and some more
    b = (difficulty < 0.45).astype(float)
    paired = paired_bootstrap(a, b, num_resamples=4000)
    ia, ib = bootstrap_ci(a, num_resamples=4000), bootstrap_ci(b, num_resamples=4000)
    assert paired.low > 0 and paired.p_value < 0.01
    assert ia.low < ib.high  # the separate intervals overlap
    assert paired.high - paired.low < 0.6 * (ia.high - ia.low)


def test_bad_inputs_name_the_problem():
    with pytest.raises(DataError, match="no items"):
        bootstrap_ci([])
    with pytest.raises(DataError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(DataError, match="same items"):
        paired_bootstrap([1, 0], [1, 0, 1])
