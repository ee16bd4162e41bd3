"""Fission-GRPO: recovery prompts from failed calls on a scripted environment, the recovery
groups' GRPO advantages, the LIFO buffer, fixed batch rows, and one tiny trainer step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tests.train import _scripted as S
from toolrl_jax.errors import ConfigError
from toolrl_jax.rl.advantages import AdvantageConfig, compute_advantages
from toolrl_jax.train.fission import FissionConfig, RecoveryBuffer, RecoveryPrompt, fission_strategy
from toolrl_jax.train.strategies import PromptDraw

FAILING_CALL = [15, S.TOOL_END]  # "size -1": the tool raises, the observation is [ERR]
GIVE_UP = [12, S.EOS]


def _world():
    a, b, c = [1, 3, 4], [1, 3, 6], [1, 3, 5]
    scripts = {}
    for p in (a, b):  # first call always fails, then the policy answers
        S.add_script(scripts, p, FAILING_CALL)
        S.add_script(scripts, p + FAILING_CALL + [S.ERR], GIVE_UP)
    S.add_script(scripts, c, GIVE_UP)  # never calls a tool
    fission = FissionConfig(recovery_samples=2, buffer_size=3, max_fraction=0.5)
    ctx = S.context(scripts, [a, b, c], samples=2, max_turns=2, num_slots=4, fission=fission,
                    prompts_per_step=2)
    return ctx, (a, b, c)


def _grpo(r, eps=1e-6):
    return (r - r.mean()) / (r.std(ddof=1) + eps)


def test_failed_calls_become_masked_recovery_groups_with_their_own_grpo():
    ctx, (a, b, c) = _world()
    batch = fission_strategy(ctx, PromptDraw(np.array([0, 1]), seed=0))
    traj, m = batch.trajectory, batch.metrics
    # K_max = floor(0.5 * 4 / (0.5 * 2)) = 2 recovery groups of G' = 2: 4 + 4 rows, 4 groups
    assert len(traj) == 8 and batch.num_groups == 4
    assert batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert m["fission/failed_call_rate"] == 1.0 and m["fission/recovery_prompts_made"] == 4
    # 4 pushed into a buffer of 3 (the oldest dropped), the 2 newest (prompt b's) popped
    assert m["fission/recovery_groups"] == 2 and m["fission/buffer"] == 1
    prefix = b + FAILING_CALL + [S.ERR]
    for i in range(4, 8):
        n = traj.lengths[i]
        assert traj.tokens[i, :n].tolist() == prefix + GIVE_UP
        assert traj.prompt_lengths[i] == len(prefix)
        assert batch.loss_mask[i, :n].tolist() == [0] * len(prefix) + [1, 1]  # prefix masked
    assert m["fission/recovery_success_rate"] == 1.0  # no failed call, ended with eos

    # the trainer's group estimator over these group ids: recovery rows follow GRPO over
    # their own G' samples only
    rewards = np.array([0.1, 0.9, 0.3, 0.2, 1.0, 0.0, 0.7, 0.4], np.float32)
    adv = np.asarray(compute_advantages(jnp.asarray(rewards), jnp.asarray(batch.group_ids),
                                        AdvantageConfig(estimator="grpo"),
                                        num_groups=batch.num_groups).advantages)
    for rows in ([4, 5], [6, 7]):
        np.testing.assert_allclose(adv[rows], _grpo(rewards[rows].astype(np.float64)), rtol=1e-5)

    # next step: prompt c makes no failure; the buffer's last prompt (a's) is popped, the other
    # recovery slot is filler with loss mask 0
    batch2 = fission_strategy(ctx, PromptDraw(np.array([2, 2]), seed=1))
    assert len(batch2.trajectory) == 8 and batch2.num_groups == 4
    assert batch2.metrics["fission/failed_call_rate"] == 0.0
    assert batch2.metrics["fission/recovery_groups"] == 1
    t2 = batch2.trajectory
    assert t2.tokens[4, : len(a) + 3].tolist() == a + FAILING_CALL + [S.ERR]
    assert batch2.loss_mask[6:].sum() == 0 and batch2.loss_mask[4:6].sum() == 4


def test_buffer_is_bounded_lifo_and_config_errors():
    buf = RecoveryBuffer(2)
    buf.push([RecoveryPrompt((k,), k, 1) for k in range(3)])
    assert [p.task_index for p in buf.pop(5)] == [2, 1]
    assert FissionConfig(recovery_samples=4, max_fraction=0.25).recovery_groups(32) == 2
    with pytest.raises(ConfigError, match="simulator_model"):
        FissionConfig(simulator_model="qwen")
    with pytest.raises(ConfigError, match="max_fraction"):
        FissionConfig(max_fraction=1.0)


@pytest.mark.slow
def test_fission_strategy_one_trainer_step(tiny_model_dir, tmp_path):
    import math

    from tests.train.test_composable import _one_step, _overrides
    from toolrl_jax.config_io import load_config
    from toolrl_jax.train.config import TrainConfig

    cfg = load_config(TrainConfig, None, _overrides(
        tiny_model_dir, tmp_path, "rollout.strategy=fission", "env.name=generated_tools",
        "rollout.max_turns=2", "rollout.max_obs_tokens=16", "fission.recovery_samples=2",
        "fission.max_fraction=0.5"))
    _, m = _one_step(cfg)
    assert m["groups"] == 2 + 2 and math.isfinite(m["loss"])  # P + K_max groups
    assert 0.0 <= m["fission/failed_call_rate"] <= 1.0 and "fission/recovery_success_rate" in m
