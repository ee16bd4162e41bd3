"""Advantage estimators vs a plain-Python reference and hand-computed cases."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.rl._reference import ref_advantages, ref_constant_groups
from toolrl_jax.errors import ConfigError
from toolrl_jax.rl import advantages as adv_lib

ESTIMATORS = ["grpo", "dr_grpo", "rloo", "batch_norm", "group_mean_batch_std"]

# group 7: four rows (mixed), group 2: three rows all equal, group 0: singleton,
# group 5: two rows; the last two rows are padding (row_mask False) with garbage values.
REWARDS = np.array([1.0, 0.0, 0.5, 4.0, 2.0, 2.0, 2.0, -3.0, 1.0, -1.0, 99.0, -99.0], np.float32)
GROUPS = np.array([7, 7, 7, 7, 2, 2, 2, 0, 5, 5, 7, 2], np.int32)
ROW_MASK = np.array([True] * 10 + [False, False])

_jitted = jax.jit(adv_lib.compute_advantages, static_argnames=("config", "num_groups"))


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("ddof", [0, 1])
def test_matches_reference(estimator, ddof):
    cfg = adv_lib.AdvantageConfig(estimator=estimator, std_ddof=ddof)
    out = _jitted(jnp.asarray(REWARDS), jnp.asarray(GROUPS), cfg, num_groups=8,
                  row_mask=jnp.asarray(ROW_MASK))
    want = ref_advantages(REWARDS, GROUPS, estimator, ddof=ddof, row_mask=ROW_MASK)
    np.testing.assert_allclose(np.asarray(out.advantages), want, rtol=1e-6, atol=1e-6)
    # singleton group and padding rows
    if estimator != "batch_norm":
        assert float(out.advantages[7]) == 0.0
    assert np.all(np.asarray(out.advantages)[10:] == 0.0)


def test_hand_computed_grpo():
    # one group [1, 0, 0, 0]: mean 0.25, unbiased std 0.5 -> (1.5, -0.5, -0.5, -0.5)
    a = adv_lib.grpo_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32), eps=0.0)
    np.testing.assert_allclose(np.asarray(a), [1.5, -0.5, -0.5, -0.5], rtol=1e-6)
    # population std sqrt(3)/4
    a0 = adv_lib.grpo_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32), std_ddof=0,
                                 eps=0.0)
    np.testing.assert_allclose(np.asarray(a0), np.array([0.75, -0.25, -0.25, -0.25]) / (3**0.5 / 4),
                               rtol=1e-6)
    # RLOO: 1 - 0 = 1; 0 - 1/3
    r = adv_lib.rloo_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32))
    np.testing.assert_allclose(np.asarray(r), [1.0, -1 / 3, -1 / 3, -1 / 3], rtol=1e-6)
    d = adv_lib.dr_grpo_advantages(jnp.array([1.0, 0, 0, 0]), jnp.zeros(4, jnp.int32))
    np.testing.assert_allclose(np.asarray(d), [0.75, -0.25, -0.25, -0.25], rtol=1e-6)
    bn = adv_lib.batch_normalized_advantages(jnp.array([1.0, 3.0]), eps=0.0)
    np.testing.assert_allclose(np.asarray(bn), [-(2**-0.5), 2**-0.5], rtol=1e-6)


def test_all_equal_group_has_zero_advantage_and_is_reported():
    cfg = adv_lib.AdvantageConfig()
    out = _jitted(jnp.asarray(REWARDS), jnp.asarray(GROUPS), cfg, num_groups=8,
                  row_mask=jnp.asarray(ROW_MASK))
    np.testing.assert_array_equal(np.asarray(out.advantages)[4:7], 0.0)
    # constant groups: 2 (all equal) and 0 (singleton)
    assert int(out.num_constant_groups) == 2
    assert int(out.num_groups) == 4
    n, rows = ref_constant_groups(REWARDS, GROUPS, ROW_MASK)
    assert n == 2
    np.testing.assert_array_equal(np.asarray(out.nonconstant_row_mask), rows)
    n2, rows2 = adv_lib.constant_groups(jnp.asarray(REWARDS), jnp.asarray(GROUPS), num_groups=8,
                                        row_mask=jnp.asarray(ROW_MASK))
    assert int(n2) == 2
    np.testing.assert_array_equal(np.asarray(rows2), rows)


def test_token_broadcast_with_mask():
    mask = jnp.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    out = adv_lib.token_advantages(jnp.array([2.0, 3.0, -1.0]), mask)
    np.testing.assert_array_equal(
        np.asarray(out), [[0, 2, 2, 0], [0, 0, 0, 0], [-1, -1, -1, -1]]
    )
    chex.assert_shape(out, (3, 4))


def test_compiles_once_per_shape():
    fn = chex.assert_max_traces(n=1)(
        lambda r, g: adv_lib.compute_advantages(r, g, adv_lib.AdvantageConfig(), num_groups=4)
    )
    jfn = jax.jit(fn)
    for seed in range(3):
        r = jax.random.normal(jax.random.key(seed), (8,))
        jfn(r, jnp.arange(8, dtype=jnp.int32) // 2)


def test_bad_config():
    with pytest.raises(ConfigError, match="estimator"):
        adv_lib.AdvantageConfig(estimator="ppo")
    with pytest.raises(ConfigError, match="std_ddof"):
        adv_lib.AdvantageConfig(std_ddof=2)


@settings(max_examples=25, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([-3.0, -1.0, 0.0, 0.5, 1.0, 2.5, 4.0]),
                  st.booleans()),
        min_size=1, max_size=12,
    ),
    estimator=st.sampled_from(ESTIMATORS),
)
def test_random_batches(data, estimator):
    groups = np.array([d[0] for d in data], np.int32)
    rewards = np.array([d[1] for d in data], np.float32)
    row_mask = np.array([d[2] for d in data])
    # pad to a fixed bucket so the jitted function is reused
    pad = 12 - len(data)
    groups_p = np.concatenate([groups, np.zeros(pad, np.int32)])
    rewards_p = np.concatenate([rewards, np.full(pad, 7.0, np.float32)])
    mask_p = np.concatenate([row_mask, np.zeros(pad, bool)])
    cfg = adv_lib.AdvantageConfig(estimator=estimator)
    out = _jitted(jnp.asarray(rewards_p), jnp.asarray(groups_p), cfg, num_groups=6,
                  row_mask=jnp.asarray(mask_p))
    want = ref_advantages(rewards_p, groups_p, estimator, row_mask=mask_p)
    np.testing.assert_allclose(np.asarray(out.advantages), want, rtol=1e-5, atol=1e-5)
    n, rows = ref_constant_groups(rewards_p, groups_p, mask_p)
    assert int(out.num_constant_groups) == n
    np.testing.assert_array_equal(np.asarray(out.nonconstant_row_mask), rows)
