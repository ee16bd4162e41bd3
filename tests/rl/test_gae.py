"""GAE, token-level rewards and the value loss against plain-loop numpy references (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from toolrl_jax.errors import ConfigError
from toolrl_jax.rl import gae as gae_lib


def _ref_gae(rewards, values, mask, gamma, lam):
    """Per row: GAE over the subsequence of action positions only (observations skipped)."""
    b, t = rewards.shape
    adv = np.zeros((b, t))
    for i in range(b):
        actions = [j for j in range(t) if mask[i, j]]
        next_v, next_a = 0.0, 0.0
        for j in reversed(actions):
            delta = rewards[i, j] + gamma * next_v - values[i, j]
            next_a = delta + gamma * lam * next_a
            next_v = values[i, j]
            adv[i, j] = next_a
    returns = (adv + values) * mask
    return adv, returns


def _ref_whiten(x, mask):
    xs = [x[i, j] for i in range(x.shape[0]) for j in range(x.shape[1]) if mask[i, j]]
    n = len(xs)
    mean = sum(xs) / n
    var = sum((v - mean) ** 2 for v in xs) / (n - 1)
    return (x - mean) / np.sqrt(var + 1e-8) * mask


def _ragged_multiturn_batch(seed=0):
    """Rows of different lengths: prompt (0), turn (1), observation (0), turn (1), padding (0)."""
    rng = np.random.default_rng(seed)
    layouts = [
        [0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0],  # two turns with an observation hole
        [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],  # one turn, right padding
        [0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1],  # three turns, last token is an action
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no action (padding row)
        [0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0],  # long hole
    ]
    mask = np.array(layouts, np.float64)
    values = rng.normal(size=mask.shape)
    rewards = rng.normal(size=mask.shape)  # dense, including junk on mask-0 tokens
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.5, 1.0)])
def test_gae_matches_reference_on_ragged_multiturn_masks(gamma, lam):
    rewards, values, mask = _ragged_multiturn_batch()
    cfg = gae_lib.GAEConfig(gamma=gamma, lam=lam, whiten=False)
    out = gae_lib.compute_gae(rewards, values, mask, cfg)
    want_adv, want_ret = _ref_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(np.asarray(out.advantages), want_adv, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.returns), want_ret, atol=1e-5)
    assert np.all(np.asarray(out.advantages)[mask == 0] == 0)


def test_gae_whitened_advantages_and_unwhitened_returns():
    rewards, values, mask = _ragged_multiturn_batch(seed=3)
    out = gae_lib.compute_gae(rewards, values, mask, gae_lib.GAEConfig(gamma=0.97, lam=0.9))
    adv, ret = _ref_gae(rewards, values, mask, 0.97, 0.9)
    np.testing.assert_allclose(np.asarray(out.advantages), _ref_whiten(adv, mask), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.returns), ret, atol=1e-5)


def test_gamma_lam_one_is_reward_to_go_minus_value():
    # gamma = lam = 1: A_t = sum of rewards of actions >= t minus V_t (the observation in
    # between does not cut the return).
    mask = np.array([[0, 1, 1, 0, 0, 1, 1, 0]], np.float64)
    rewards = np.array([[9.0, 0.1, 0.2, 5.0, 5.0, 0.3, 1.0, 7.0]])
    values = np.array([[0.0, 0.5, -0.5, 2.0, 2.0, 0.25, 0.75, 0.0]])
    out = gae_lib.compute_gae(rewards, values, mask, gae_lib.GAEConfig(whiten=False))
    want = np.array([[0, 1.6 - 0.5, 1.5 + 0.5, 0, 0, 1.3 - 0.25, 1.0 - 0.75, 0]])
    np.testing.assert_allclose(np.asarray(out.advantages), want, atol=1e-6)


def test_token_rewards_last_action_and_kl():
    rng = np.random.default_rng(1)
    _, _, mask = _ragged_multiturn_batch()
    seq = rng.normal(size=mask.shape[0])
    old, ref = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
    got = np.asarray(gae_lib.token_rewards(seq, mask, old_logprobs=old, ref_logprobs=ref,
                                           kl_coef=0.1, kl_estimator="k1"))
    want = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        actions = [j for j in range(mask.shape[1]) if mask[i, j]]
        for j in actions:
            want[i, j] -= 0.1 * (old[i, j] - ref[i, j])
        if actions:
            want[i, actions[-1]] += seq[i]
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(gae_lib.last_action_index(mask)),
                                  [8, 7, 11, -1, 9])
    with pytest.raises(ValueError, match="kl_coef"):
        gae_lib.token_rewards(seq, mask, kl_coef=0.1)


def test_token_rewards_from_turns():
    token_turn = np.array([[-1, 0, 0, -1, 1, 1, 1, -1, 2, -1],
                           [-1, -1, 0, 0, 0, -1, -1, -1, -1, -1]])
    turn_rewards = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    turn_mask = np.array([[True, False, True], [True, False, False]])
    got = np.asarray(gae_lib.token_rewards_from_turns(turn_rewards, token_turn, turn_mask))
    want = np.zeros(token_turn.shape)
    want[0, 2], want[0, 8], want[1, 4] = 1.0, 3.0, 4.0
    np.testing.assert_array_equal(got, want)


def _ref_value_loss(v, old, ret, mask, clip):
    num, clipped, n = 0.0, 0.0, 0.0
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if not mask[i, j]:
                continue
            l1 = (v[i, j] - ret[i, j]) ** 2
            vc = min(max(v[i, j], old[i, j] - clip), old[i, j] + clip)
            l2 = (vc - ret[i, j]) ** 2
            num += 0.5 * max(l1, l2)
            clipped += float(l2 > l1)
            n += 1
    return num / n, clipped / n


def _ref_explained_variance(ret, v, mask):
    r = ret[mask > 0]
    d = (ret - v)[mask > 0]
    return 1.0 - np.var(d, ddof=1) / (np.var(r, ddof=1) + 1e-5)


def test_value_loss_clip_fraction_and_explained_variance():
    rng = np.random.default_rng(2)
    _, _, mask = _ragged_multiturn_batch()
    ret = rng.normal(size=mask.shape)
    old = ret + rng.normal(scale=0.8, size=mask.shape)
    v = old + rng.normal(scale=0.8, size=mask.shape)
    loss, metrics = gae_lib.value_loss(v, ret, mask, old_values=old, vf_clip=0.5)
    want_loss, want_frac = _ref_value_loss(v, old, ret, mask, 0.5)
    assert 0.05 < want_frac < 0.95  # the case exercises both branches
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["vf_clip_frac"]), want_frac, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["explained_variance"]),
                               _ref_explained_variance(ret, v, mask), rtol=1e-4)
    unclipped, _ = gae_lib.value_loss(v, ret, mask, old_values=old, vf_clip=None)
    np.testing.assert_allclose(float(unclipped), 0.5 * np.mean(((v - ret) ** 2)[mask > 0]),
                               rtol=1e-5)


def test_value_loss_gradient_is_zero_on_clipped_tokens():
    import jax

    v = np.array([[0.0, 2.0, 0.1]])
    old = np.array([[0.0, 0.0, 0.0]])
    ret = np.array([[1.0, 3.0, 1.0]])
    mask = np.ones((1, 3))
    g = jax.grad(lambda x: gae_lib.value_loss(x, ret, mask, old_values=old, vf_clip=0.5)[0])(v)
    # token 0: l1 = 1, clipped v = 0 -> l2 = 1: max picks l1 (not strictly greater) -> grad v-ret
    # token 1: l1 = 1, clipped v = 0.5 -> l2 = 6.25 > l1: the clipped branch has zero gradient
    # token 2: l1 = 0.81, clipped v = 0.1 (inside) -> equal -> grad of l1
    np.testing.assert_allclose(np.asarray(g), [[(0 - 1) / 3, 0.0, (0.1 - 1) / 3]], atol=1e-6)


def test_config_errors():
    with pytest.raises(ConfigError, match="gamma"):
        gae_lib.GAEConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="vf_clip"):
        gae_lib.GAEConfig(vf_clip=0.0)
    with pytest.raises(ConfigError, match="kl_coef"):
        gae_lib.GAEConfig(kl_coef=-0.1)
    with pytest.raises(ConfigError, match="kl_estimator"):
        gae_lib.GAEConfig(kl_estimator="k9")


def test_gae_estimator_is_registered_and_matches_the_reference():
    """``algo.advantage.estimator: gae``: outcome reward on the last action minus beta * k1 KL,
    GAE over the actions (holes skipped), whitened; numpy reference."""
    import dataclasses

    from toolrl_jax.rl.advantages import ESTIMATORS, CreditInputs, TokenEstimator
    from toolrl_jax.rl.train_step import AlgoConfig

    est = ESTIMATORS.get("gae")
    assert isinstance(est, TokenEstimator) and est.needs_values
    _, values, mask = _ragged_multiturn_batch(seed=5)
    rng = np.random.default_rng(6)
    seq = rng.normal(size=mask.shape[0])
    old, ref = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
    algo = AlgoConfig(gae=gae_lib.GAEConfig(gamma=0.95, lam=0.9, kl_coef=0.05))
    inputs = CreditInputs(rewards=seq, group_ids=np.zeros(5, np.int32), num_groups=1,
                          loss_mask=mask, token_turn=np.full(mask.shape, -1), algo=algo,
                          values=values, old_logprobs=old, ref_logprobs=ref)
    r = -0.05 * (old - ref) * mask
    for i, last in enumerate([8, 7, 11, -1, 9]):
        if last >= 0:
            r[i, last] += seq[i]
    adv, ret = _ref_gae(r, values, mask, 0.95, 0.9)
    out = gae_lib.gae_from_credit(inputs)
    np.testing.assert_allclose(np.asarray(out.advantages), _ref_whiten(adv, mask), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.returns), ret, atol=1e-5)
    np.testing.assert_allclose(np.asarray(est(inputs)), np.asarray(out.advantages))
    with pytest.raises(ValueError, match="values"):
        gae_lib.gae_from_credit(dataclasses.replace(inputs, values=None))
    with pytest.raises(ValueError, match="kl_coef"):
        gae_lib.gae_from_credit(dataclasses.replace(inputs, ref_logprobs=None))


def test_gae_with_per_turn_rewards_matches_the_reference():
    """``algo.gae.turn_reward_coef = c``: each rewarded turn's ``c * r_{b,k}`` on its last action
    (turns without a reward skipped), the outcome on the row's last action; numpy reference."""
    from toolrl_jax.rl.advantages import CreditInputs
    from toolrl_jax.rl.train_step import AlgoConfig

    _, values, mask = _ragged_multiturn_batch(seed=7)
    # turn index of every action, from the layouts' runs of 1s (observation holes between)
    token_turn = np.full(mask.shape, -1)
    for i in range(mask.shape[0]):
        k, prev = -1, 0
        for j in range(mask.shape[1]):
            if mask[i, j] and not prev:
                k += 1
            if mask[i, j]:
                token_turn[i, j] = k
            prev = mask[i, j]
    turn_rewards = np.array([[0.5, 2.0, 9.0], [1.5, 9.0, 9.0], [1.0, -1.0, 3.0],
                             [9.0, 9.0, 9.0], [0.25, 4.0, 9.0]])
    turn_mask = np.array([[True, True, False], [True, False, False], [True, False, True],
                          [False, False, False], [False, True, False]])
    seq = np.array([1.0, -2.0, 0.5, 3.0, 2.0])
    algo = AlgoConfig(gae=gae_lib.GAEConfig(gamma=0.9, lam=0.8, whiten=False,
                                            turn_reward_coef=0.5))
    inputs = CreditInputs(rewards=seq, group_ids=np.zeros(5, np.int32), num_groups=1,
                          loss_mask=mask, token_turn=token_turn, algo=algo, values=values,
                          turn_rewards=turn_rewards, turn_mask=turn_mask)
    r = np.zeros(mask.shape)
    # hand-placed: (row, last action of the turn, turn reward); rows' last actions get R_b
    for i, j, rew in [(0, 4, 0.5), (0, 8, 2.0), (1, 7, 1.5), (2, 3, 1.0), (2, 11, 3.0),
                      (4, 9, 4.0)]:
        r[i, j] += 0.5 * rew
    for i, last in enumerate([8, 7, 11, -1, 9]):
        if last >= 0:
            r[i, last] += seq[i]
    adv, ret = _ref_gae(r, values, mask, 0.9, 0.8)
    out = gae_lib.gae_from_credit(inputs)
    np.testing.assert_allclose(np.asarray(out.advantages), adv, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.returns), ret, atol=1e-5)
    with pytest.raises(ValueError, match="turn_reward_coef"):
        import dataclasses
        gae_lib.gae_from_credit(dataclasses.replace(inputs, turn_rewards=None))
    with pytest.raises(ConfigError, match="turn_reward_coef"):
        gae_lib.GAEConfig(turn_reward_coef=-1.0)
