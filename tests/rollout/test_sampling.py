"""Sampling strategies: frequencies of sampled tokens match temperature / top-k / top-p
distributions computed independently in numpy (chi-square test)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from toolrl_jax.errors import ConfigError
from toolrl_jax.rollout.sampling import SamplingConfig, probabilities, sample_from_logits

LOGITS = np.array([2.0, 1.5, 1.2, 0.4, 0.0, -0.3, -1.0, -2.5], np.float64)


def reference_distribution(logits, temperature, top_k, top_p):
    """Plain numpy: temperature, then keep top-k, then the smallest nucleus with mass >= p."""
    z = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros(len(z), bool)
    keep[order[: top_k if top_k else len(z)]] = True
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1.0:
        mass = 0.0
        nucleus = np.zeros(len(z), bool)
        for i in order:
            if not keep[i]:
                break
            nucleus[i] = True
            mass += p[i]
            if mass >= top_p:
                break
        p = np.where(nucleus, p, 0.0)
        p /= p.sum()
    return p


CASES = [
    dict(temperature=1.0, top_k=0, top_p=1.0),
    dict(temperature=0.6, top_k=0, top_p=1.0),
    dict(temperature=1.7, top_k=3, top_p=1.0),
    dict(temperature=1.0, top_k=0, top_p=0.75),
    dict(temperature=1.3, top_k=5, top_p=0.85),
]


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "T{temperature}-k{top_k}-p{top_p}".format(**c)
)
def test_sampled_frequencies_match_distribution(case):
    from scipy import stats

    n = 40000
    config = SamplingConfig(**case)
    expected = reference_distribution(LOGITS, case["temperature"], case["top_k"], case["top_p"])
    np.testing.assert_allclose(
        np.asarray(probabilities(LOGITS[None].astype(np.float32), config))[0], expected, atol=1e-6
    )
    keys = jax.random.split(jax.random.PRNGKey(123), n)
    tokens, logprobs = sample_from_logits(keys, np.tile(LOGITS.astype(np.float32), (n, 1)), config)
    tokens, logprobs = np.asarray(tokens), np.asarray(logprobs)
    counts = np.bincount(tokens, minlength=len(LOGITS))
    support = expected > 0
    assert counts[~support].sum() == 0, "sampled a token outside the top-k / top-p set"
    chi2, p_value = stats.chisquare(counts[support], n * expected[support])
    assert p_value > 1e-3, (counts, n * expected, chi2)
    # returned log-probs are log q(token) of the processed distribution
    np.testing.assert_allclose(logprobs, np.log(expected[tokens]), atol=1e-5)


def test_chi_square_detects_a_wrong_distribution():
    """The statistic above can fail: samples at T=1 are rejected against the T=0.6 law."""
    from scipy import stats

    n = 40000
    keys = jax.random.split(jax.random.PRNGKey(7), n)
    tokens, _ = sample_from_logits(
        keys, np.tile(LOGITS.astype(np.float32), (n, 1)), SamplingConfig()
    )
    counts = np.bincount(np.asarray(tokens), minlength=len(LOGITS))
    wrong = reference_distribution(LOGITS, 0.6, 0, 1.0)
    assert stats.chisquare(counts, n * wrong).pvalue < 1e-6


def test_greedy_is_argmax_and_reports_model_logprob():
    logits = np.random.default_rng(0).standard_normal((5, 11)).astype(np.float32)
    tokens, logprobs = sample_from_logits(
        jax.random.split(jax.random.PRNGKey(0), 5), logits, SamplingConfig(temperature=0.0)
    )
    np.testing.assert_array_equal(np.asarray(tokens), logits.argmax(-1))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        np.asarray(logprobs), log_softmax[np.arange(5), logits.argmax(-1)], atol=1e-5
    )


def test_top_p_keeps_at_least_the_most_likely_token():
    logits = np.array([[10.0, 0.0, -1.0]], np.float32)
    q = np.asarray(probabilities(logits, SamplingConfig(top_p=0.01)))
    np.testing.assert_allclose(q, [[1.0, 0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2)]
)
def test_bad_sampling_config_raises(bad):
    with pytest.raises(ConfigError):
        SamplingConfig(**bad)
