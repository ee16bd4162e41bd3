"""GSPO ratio, loss and gradient against numpy loops and central finite differences (float64)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolrl_jax.rl import gspo, losses

MASK = np.array(
    [[0, 1, 1, 1, 0, 0],
     [0, 1, 0, 1, 1, 0],   # multi-turn hole
     [0, 0, 0, 0, 0, 0],   # padding row
     [1, 1, 1, 1, 1, 1]],
    np.float64,
)


def _batch(seed=0, spread=0.3):
    r = np.random.default_rng(seed)
    old = -2.0 + 0.5 * r.normal(size=MASK.shape)
    lp = old + spread * r.normal(size=MASK.shape)
    adv = np.array([1.2, -0.7, 0.4, -1.5])
    return lp, old, adv


def _ref_seq_ratio(lp, old, mask):
    out = []
    for i in range(mask.shape[0]):
        toks = [j for j in range(mask.shape[1]) if mask[i, j]]
        mean = sum(lp[i, j] - old[i, j] for j in toks) / max(len(toks), 1)
        out.append(math.exp(min(mean, 10.0)))
    return np.array(out)


def _ref_gspo_loss(lp, old, adv, mask, lo, hi, aggregation, dual_c=None):
    """Paper objective: per-sequence clipped surrogate; seq-mean (or length-weighted) mean."""
    s = _ref_seq_ratio(lp, old, mask)
    num, den = 0.0, 0.0
    for i in range(mask.shape[0]):
        n = mask[i].sum()
        if n == 0:
            continue
        a = adv[i]
        li = max(-a * s[i], -a * min(max(s[i], 1 - lo), 1 + hi))
        if dual_c is not None and a < 0:
            li = min(li, -dual_c * a)
        weight = 1.0 if aggregation == "seq-mean-token-mean" else n
        num += weight * li
        den += weight
    return num / den


def _loss(lp, old, adv, mask, cfg, fn=gspo.gspo_loss_terms, **kw):
    terms = fn(lp, old, adv, mask, cfg, **kw)
    return terms.numerator / losses.aggregation_denominator(mask, cfg.aggregation)


def test_sequence_ratio_matches_numpy():
    lp, old, _ = _batch()
    got = losses.sequence_log_ratio(jnp.asarray(lp), jnp.asarray(old), jnp.asarray(MASK))
    np.testing.assert_allclose(np.exp(np.asarray(got)), _ref_seq_ratio(lp, old, MASK), rtol=1e-6)
    big = losses.sequence_log_ratio(jnp.full((1, 3), 50.0), jnp.zeros((1, 3)), jnp.ones((1, 3)))
    assert float(big[0]) == losses.LOG_RATIO_CAP


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("lo,hi,dual", [(0.2, 0.28, None), (0.05, 0.05, 2.0), (3e-4, 4e-4, None)])
def test_sequence_loss_matches_numpy(aggregation, lo, hi, dual):
    lp, old, adv = _batch(seed=1)
    cfg = losses.LossConfig(clip_eps_low=lo, clip_eps_high=hi, aggregation=aggregation,
                            dual_clip_c=dual)
    got = float(_loss(lp, old, adv, MASK, cfg))
    want = _ref_gspo_loss(lp, old, adv, MASK, lo, hi, aggregation, dual)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_sequence_loss_gradient_matches_finite_differences(aggregation):
    with jax.enable_x64(True):
        lp, old, adv = _batch(seed=2, spread=0.15)
        # clip range chosen so that some sequences are clipped and some are not
        cfg = losses.LossConfig(clip_eps_low=0.05, clip_eps_high=0.05, aggregation=aggregation,
                                dual_clip_c=3.0, kl_coef=0.1, entropy_coef=0.0)
        ref = old + 0.1
        s = _ref_seq_ratio(lp, old, MASK)
        assert np.any(np.abs(s[MASK.sum(1) > 0] - 1) > 0.05)
        assert np.any(np.abs(s[MASK.sum(1) > 0] - 1) < 0.05)

        def f(x):
            return _loss(x, old, adv, MASK, cfg, ref_logprobs=ref)

        g = np.asarray(jax.grad(f)(jnp.asarray(lp)))
        eps = 1e-6
        fd = np.zeros_like(lp)
        for i in range(lp.shape[0]):
            for j in range(lp.shape[1]):
                e = np.zeros_like(lp)
                e[i, j] = eps
                fd[i, j] = (float(f(lp + e)) - float(f(lp - e))) / (2 * eps)
        assert np.abs(g).max() > 1e-3
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_token_form_with_constant_advantages_equals_sequence_form():
    with jax.enable_x64(True):
        lp, old, adv = _batch(seed=3, spread=0.1)
        cfg = losses.LossConfig(clip_eps_low=0.05, clip_eps_high=0.05,
                                aggregation="seq-mean-token-mean")
        adv_tok = np.broadcast_to(adv[:, None], MASK.shape)
        seq_f = lambda x: _loss(x, old, adv, MASK, cfg)  # noqa: E731
        tok_f = lambda x: _loss(x, old, adv_tok, MASK, cfg)  # noqa: E731
        np.testing.assert_allclose(float(tok_f(lp)), float(seq_f(lp)), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(jax.grad(tok_f)(lp)),
                                   np.asarray(jax.grad(seq_f)(lp)), rtol=1e-10, atol=1e-14)


def test_token_form_gradient_is_sequence_ratio_times_token_score():
    """GSPO-token: d loss / d logp_it = -w_it A_it s_i / D where sequence i is not clipped."""
    with jax.enable_x64(True):
        lp, old, _ = _batch(seed=4, spread=0.1)
        adv = np.random.default_rng(5).normal(size=MASK.shape)
        lo = hi = 0.03
        cfg = losses.LossConfig(clip_eps_low=lo, clip_eps_high=hi, aggregation="token-mean")
        g = np.asarray(jax.grad(lambda x: _loss(x, old, adv, MASK, cfg))(lp))
        s = _ref_seq_ratio(lp, old, MASK)
        d = MASK.sum()
        want = np.zeros_like(lp)
        for i in range(MASK.shape[0]):
            for j in range(MASK.shape[1]):
                if not MASK[i, j]:
                    continue
                a = adv[i, j]
                clipped = (a > 0 and s[i] > 1 + hi) or (a < 0 and s[i] < 1 - lo)
                want[i, j] = 0.0 if clipped else -a * s[i] / d
        assert np.any(want == 0) and np.any(want != 0)
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-14)


def test_on_policy_token_form_equals_ppo_loss():
    """At ratio 1 GSPO-token and token-level PPO agree in value and gradient (KL and entropy on)."""
    lp, _, _ = _batch(seed=6)
    adv = np.random.default_rng(7).normal(size=MASK.shape)
    ref, ent = lp - 0.2, np.abs(lp) * 0.1
    cfg = losses.LossConfig(kl_coef=0.05, entropy_coef=0.01, aggregation="seq-mean-token-mean")
    kw = dict(ref_logprobs=ref, entropy=ent)
    old = jnp.asarray(lp)
    ours = lambda x: _loss(x, old, adv, MASK, cfg, **kw)  # noqa: E731
    ppo = lambda x: _loss(x, old, adv, MASK, cfg, fn=losses.policy_loss_terms, **kw)  # noqa: E731
    np.testing.assert_allclose(float(ours(lp)), float(ppo(lp)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(ours)(jnp.asarray(lp))),
                               np.asarray(jax.grad(ppo)(jnp.asarray(lp))), rtol=1e-5, atol=1e-8)


def test_micro_batches_sum_to_the_full_batch_and_config_helper():
    lp, old, adv = _batch(seed=8)
    cfg = gspo.gspo_loss_config(clip_eps_low=0.1, clip_eps_high=0.1)
    assert cfg.aggregation == "seq-mean-token-mean"
    assert gspo.gspo_loss_config().clip_eps_high == 4e-4
    full = gspo.gspo_loss_terms(lp, old, adv, MASK, cfg).numerator
    parts = sum(gspo.gspo_loss_terms(lp[i::2], old[i::2], adv[i::2], MASK[i::2], cfg).numerator
                for i in range(2))
    np.testing.assert_allclose(float(parts), float(full), rtol=1e-6)
    with pytest.raises(ValueError, match="sample_logprobs"):
        gspo.gspo_loss_terms(lp, old, adv, MASK, losses.LossConfig(tis_cap=2.0))
