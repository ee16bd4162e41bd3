"""Policy loss, KL, entropy, aggregation and TIS vs a loop-based reference; finite differences."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from tests.rl._reference import ref_kl, ref_policy_loss
from toolrl_jax.errors import ConfigError
from toolrl_jax.rl import losses
from toolrl_jax.rl.logprobs import token_logprobs_and_entropy

B, T = 6, 7


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    lp = rng.normal(-2.0, 1.0, (B, T)).astype(np.float32)
    old = (lp + rng.normal(0, 0.4, (B, T))).astype(np.float32)  # ratios well outside the clip
    ref = (lp + rng.normal(0, 0.3, (B, T))).astype(np.float32)
    sample = (old + rng.normal(0, 0.5, (B, T))).astype(np.float32)
    ent = rng.uniform(0.1, 3.0, (B, T)).astype(np.float32)
    adv = np.array([1.5, -0.5, 0.0, -2.0, 0.7, 3.0], np.float32)  # row 2: zero advantage
    mask = (rng.uniform(size=(B, T)) < 0.7).astype(np.float32)
    mask[1] = 0.0  # a row with no loss token
    mask[4, :] = 0.0
    mask[4, 3] = 1.0  # a row with one loss token
    return dict(lp=lp, old=old, ref=ref, sample=sample, ent=ent, adv=adv, mask=mask)


CASES = [
    dict(),
    dict(clip_eps_low=0.2, clip_eps_high=0.28),
    dict(dual_clip_c=3.0),
    dict(kl_coef=0.05, kl_estimator="k1"),
    dict(kl_coef=0.05, kl_estimator="k2"),
    dict(kl_coef=0.05, kl_estimator="k3", entropy_coef=0.001),
    dict(tis_cap=2.0),
    dict(clip_eps_high=0.28, dual_clip_c=3.0, kl_coef=0.01, entropy_coef=0.01, tis_cap=1.5),
]
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _ref_kwargs(case, agg, bt, norm_const=None):
    return dict(
        eps_low=case.get("clip_eps_low", 0.2), eps_high=case.get("clip_eps_high", 0.2),
        dual_c=case.get("dual_clip_c"), kl_coef=case.get("kl_coef", 0.0),
        kl_est=case.get("kl_estimator", "k3"), ref=bt["ref"],
        ent_coef=case.get("entropy_coef", 0.0), ent=bt["ent"], agg=agg, norm_const=norm_const,
        tis_cap=case.get("tis_cap"), sample=bt["sample"],
    )


@pytest.mark.parametrize("case,agg", list(itertools.product(CASES, AGGS)))
def test_loss_matches_reference(case, agg):
    bt = _batch()
    cfg = losses.LossConfig(aggregation=agg, **case)
    loss, metrics = losses.policy_loss(  # eager: op-level compile caches are shared by cases
        bt["lp"], bt["old"], bt["adv"], bt["mask"], config=cfg, ref_logprobs=bt["ref"],
        entropy=bt["ent"], sample_logprobs=bt["sample"],
    )
    want = ref_policy_loss(bt["lp"], bt["old"], bt["adv"], bt["mask"], **_ref_kwargs(case, agg, bt))
    np.testing.assert_allclose(float(loss), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-6, atol=1e-6)


def test_norm_constant_and_per_token_advantages():
    bt = _batch(1)
    adv_tok = np.repeat(bt["adv"][:, None], T, 1) * np.linspace(0.5, 1.5, T)[None]
    cfg = losses.LossConfig(aggregation="seq-mean-token-sum-norm", norm_constant=1024.0)
    loss, _ = losses.policy_loss(bt["lp"], bt["old"], adv_tok, bt["mask"], cfg)
    want = ref_policy_loss(bt["lp"], bt["old"], adv_tok, bt["mask"],
                           agg="seq-mean-token-sum-norm", norm_const=1024.0)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6, atol=1e-8)


def test_hand_computed_clip_and_dual_clip():
    one = np.ones((1, 1), np.float32)
    lp = np.log(1.5) * one
    # A = 1, ratio 1.5, eps 0.2 -> -min(1.5, 1.2) = -1.2, clipped
    loss, m = losses.policy_loss(lp, 0 * one, np.ones(1, np.float32), one)
    np.testing.assert_allclose(float(loss), -1.2, rtol=1e-6)
    assert float(m["clip_frac"]) == 1.0
    # A = -1, ratio 5: max(5, 1.2) = 5; dual clip c=3 -> 3
    lp5 = np.log(5.0) * one
    loss, _ = losses.policy_loss(lp5, 0 * one, -np.ones(1, np.float32), one)
    np.testing.assert_allclose(float(loss), 5.0, rtol=1e-6)
    loss, m = losses.policy_loss(lp5, 0 * one, -np.ones(1, np.float32), one,
                                 losses.LossConfig(dual_clip_c=3.0))
    np.testing.assert_allclose(float(loss), 3.0, rtol=1e-6)
    assert float(m["dual_clip_frac"]) == 1.0
    # TIS: old - sample = log 4 capped at 2 -> weight 2, ratio 1, A = 1 -> -2
    loss, m = losses.policy_loss(0 * one, 0 * one, np.ones(1, np.float32), one,
                                 losses.LossConfig(tis_cap=2.0),
                                 sample_logprobs=-np.log(4.0) * one)
    np.testing.assert_allclose(float(loss), -2.0, rtol=1e-6)
    np.testing.assert_allclose(float(m["mismatch_abs_logp"]), np.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(float(m["mismatch_kl_k3"]), 4 - np.log(4.0) - 1, rtol=1e-6)


def test_kl_estimators_and_kl_in_reward():
    bt = _batch(2)
    for est in ("k1", "k2", "k3"):
        np.testing.assert_allclose(
            np.asarray(losses.kl_penalty(bt["lp"], bt["ref"], est)),
            ref_kl(bt["lp"].astype(np.float64), bt["ref"].astype(np.float64), est),
            rtol=1e-5, atol=1e-6,
        )
    rewards = np.arange(B, dtype=np.float32)
    pen, mean_kl = losses.kl_in_reward(rewards, bt["old"], bt["ref"], bt["mask"], kl_coef=0.001)
    d = (bt["old"].astype(np.float64) - bt["ref"]) * bt["mask"]
    np.testing.assert_allclose(np.asarray(pen), rewards - 0.001 * d.sum(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(mean_kl), d.sum() / bt["mask"].sum(), rtol=1e-5)


@pytest.mark.parametrize("agg", AGGS)
def test_microbatch_decomposition_is_exact(agg):
    """Summing numerators over row splits and dividing by the global D == whole-batch loss."""
    bt = _batch(3)
    cfg = losses.LossConfig(aggregation=agg, kl_coef=0.02, entropy_coef=0.01)
    full, metrics = losses.policy_loss(bt["lp"], bt["old"], bt["adv"], bt["mask"], cfg,
                                       ref_logprobs=bt["ref"], entropy=bt["ent"])
    denom = losses.aggregation_denominator(bt["mask"], agg)
    num, tok = 0.0, {}
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        terms = losses.policy_loss_terms(
            bt["lp"][rows], bt["old"][rows], bt["adv"][rows], bt["mask"][rows], cfg,
            ref_logprobs=bt["ref"][rows], entropy=bt["ent"][rows])
        num = num + terms.numerator
        tok = {k: tok.get(k, 0.0) + v for k, v in terms.token_sums.items()}
    np.testing.assert_allclose(float(num / denom), float(full), rtol=1e-6)
    assert float(tok["num_tokens"]) == bt["mask"].sum()
    np.testing.assert_allclose(float(tok["clip_frac"] / tok["num_tokens"]),
                               float(metrics["clip_frac"]), rtol=1e-6)


def test_empty_batch_is_zero():
    z = np.zeros((2, 3), np.float32)
    for agg in AGGS:
        loss, _ = losses.policy_loss(z, z, np.ones(2, np.float32), z,
                                     losses.LossConfig(aggregation=agg))
        assert float(loss) == 0.0


def test_missing_inputs_and_bad_config():
    bt = _batch()
    with pytest.raises(ValueError, match="ref_logprobs"):
        losses.policy_loss(bt["lp"], bt["old"], bt["adv"], bt["mask"],
                           losses.LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="sample_logprobs"):
        losses.policy_loss(bt["lp"], bt["old"], bt["adv"], bt["mask"],
                           losses.LossConfig(tis_cap=2.0))
    with pytest.raises(ConfigError, match="aggregation"):
        losses.LossConfig(aggregation="mean")
    with pytest.raises(ConfigError, match="dual_clip_c"):
        losses.LossConfig(dual_clip_c=0.5)


def test_gradient_matches_finite_differences_tiny_model():
    """d loss / d params of a tiny model (tanh layer + chunked log-probs) vs central FD, float64."""
    with jax.enable_x64(True):
        r = np.random.default_rng(0)
        b, t, d_in, d, v = 3, 4, 5, 6, 11
        x = r.normal(size=(b, t, d_in))
        targets = r.integers(0, v, (b, t))
        params = {"w1": 0.5 * r.normal(size=(d_in, d)), "wo": 0.5 * r.normal(size=(d, v))}
        mask = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], np.float64)
        adv = np.array([1.3, -0.4, -0.9])
        old = -2.4 + 0.3 * r.normal(size=(b, t))
        ref = -2.4 + 0.3 * r.normal(size=(b, t))
        cfg = losses.LossConfig(aggregation="seq-mean-token-mean", kl_coef=0.1, entropy_coef=0.05,
                                clip_eps_high=0.28, dual_clip_c=3.0)

        def loss_fn(p):
            h = jnp.tanh(x @ p["w1"])
            lp, ent = token_logprobs_and_entropy(h, p["wo"], targets, vocab_chunk=4)
            return losses.policy_loss(lp, old, adv, mask, cfg, ref_logprobs=ref, entropy=ent)[0]

        params = jax.tree.map(jnp.asarray, params)
        grads = jax.jit(jax.grad(loss_fn))(params)
        eps = 1e-6
        flat, unravel = ravel_pytree(params)
        gflat, _ = ravel_pytree(grads)
        f = jax.jit(jax.vmap(lambda v: loss_fn(unravel(v))))
        basis = eps * jnp.eye(flat.shape[0], dtype=flat.dtype)
        fd = np.asarray((f(flat + basis) - f(flat - basis)) / (2 * eps))
        assert np.abs(gflat).max() > 1e-3
        np.testing.assert_allclose(np.asarray(gflat), fd, rtol=1e-5, atol=1e-7)


def test_jitted_loss_equals_eager():
    bt = _batch(4)
    cfg = losses.LossConfig(**CASES[-1], aggregation="seq-mean-token-mean")
    args = (bt["lp"], bt["old"], bt["adv"], bt["mask"])
    kw = dict(ref_logprobs=bt["ref"], entropy=bt["ent"], sample_logprobs=bt["sample"])
    jitted, _ = jax.jit(losses.policy_loss, static_argnames="config")(*args, config=cfg, **kw)
    eager, _ = losses.policy_loss(*args, cfg, **kw)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
