"""PPO with a learned critic in the trainer (``algo.advantage.estimator: gae``).

A tiny random model on two fixed prompts, with a reward that is a fixed function of the prompt
(so the critic can predict it from any prefix): the value loss falls and the explained variance rises; a run
stopped after its checkpoint and resumed reproduces every per-step metric of the uninterrupted
run bit for bit (critic included); the critic is built only for an estimator that needs values.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from toolrl_jax.config_io import load_config
from toolrl_jax.errors import ConfigError
from toolrl_jax.rl.train_step import TrainState
from toolrl_jax.train.config import TrainConfig
from toolrl_jax.train.critic_stage import ActorCriticState
from toolrl_jax.train.metrics import read_metrics
from toolrl_jax.train.rewards import REWARD_COMPONENTS, ComponentScore

STEPS = 20
WARMUP = 2  # critic-only steps


@REWARD_COMPONENTS.register("prompt_hash", overwrite=True)
def prompt_hash(ctx, cfg) -> ComponentScore:
    """A deterministic reward of the task alone, ``crc32(task id) % 1000 / 999`` in [0, 1]."""
    return ComponentScore(np.asarray([zlib.crc32(t.id.encode()) % 1000 / 999.0
                                      for t in ctx.tasks], np.float32))


def _cfg(model_dir, out_dir, steps, *extra):
    return load_config(TrainConfig, None, [
        f"model.name={model_dir}", f"train.out_dir={out_dir}", f"train.steps={steps}",
        "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.plot=false",
        "train.eval_limit=1", "data.num_train=2", "data.num_eval=1",
        "data.prompt_style=compact", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=6", "rollout.num_slots=4",
        "reward.components={toolrl: 0.0, prompt_hash: 1.0}",
        "algo.advantage.estimator=gae", "algo.gae.kl_coef=0.001", "algo.ppo_minibatches=2",
        "algo.micro_batch_size=2", "algo.loss.entropy_coef=0.0", "optim.learning_rate=1e-3",
        "critic.optim.learning_rate=3e-3", f"critic.warmup_steps={WARMUP}", *extra])


def _train_records(run_dir):
    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    from toolrl_jax.train.trainer import Trainer

    out = tmp_path_factory.mktemp("ppo_full")
    Trainer(_cfg(tiny_model_dir, out, STEPS)).train()
    return _train_records(out)


@pytest.mark.slow
def test_critic_learns_the_value_and_warmup_skips_the_policy(full_run):
    recs = full_run
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    for r in recs[:WARMUP]:  # critic warm-up: no policy update
        assert r["critic/warmup"] == 1 and "loss" not in r
    for r in recs[WARMUP:]:
        assert r["critic/warmup"] == 0 and np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"])
    for key in ("vf_loss", "vf_clip_frac", "vf_explained_var", "grad_norm", "explained_variance",
                "values_mean", "returns_mean", "advantages_mean", "advantages_std"):
        assert all(np.isfinite(r[f"critic/{key}"]) for r in recs), key
    # the value head starts at 0: the first values are 0, the first explained variance ~0
    assert recs[0]["critic/values_mean"] == 0.0
    assert abs(recs[0]["critic/explained_variance"]) < 1e-3
    first = lambda k: np.mean([r[f"critic/{k}"] for r in recs[:3]])  # noqa: E731
    last = lambda k: np.mean([r[f"critic/{k}"] for r in recs[-3:]])  # noqa: E731
    curve = [(round(r["critic/vf_loss"], 4), round(r["critic/explained_variance"], 3))
             for r in recs]
    assert last("vf_loss") < 0.5 * first("vf_loss"), curve
    assert last("explained_variance") > first("explained_variance") + 0.2, curve
    # returns of gamma = lam = 1 are the outcome reward minus the tiny KL penalty
    assert all(-0.05 < r["critic/returns_mean"] < 1.05 for r in recs)


@pytest.mark.slow
def test_resume_with_the_critic_is_bit_identical(full_run, tiny_model_dir, tmp_path):
    """Stopped after step 4 (checkpoint at 4), resumed to step 6: steps 5-6 equal the
    uninterrupted run's exactly, the critic's metrics too (the critic is in the checkpoint)."""
    from toolrl_jax.train.trainer import Trainer

    Trainer(_cfg(tiny_model_dir, tmp_path, 4)).train()
    resumed = Trainer(_cfg(tiny_model_dir, tmp_path, 6))
    run = resumed.start_run()
    try:
        assert run.start_step == 4 and isinstance(run.state, ActorCriticState)
        assert int(run.state.critic.step) == 4 * 2  # 4 steps x 2 critic mini-batches
        assert int(run.state.policy.step) == (4 - WARMUP) * 2
    finally:
        run.checkpointer.close()
        run.metrics.close()
    resumed.train()
    split = {r["step"]: r for r in _train_records(tmp_path)}
    full = {r["step"]: r for r in full_run}
    for step in (5, 6):
        keys = [k for k in full[step] if not k.startswith("time_") and k != "rollout_tokens_per_s"]
        assert {k: split[step][k] for k in keys} == {k: full[step][k] for k in keys}, step


def test_only_an_estimator_with_values_builds_the_critic(tiny_model_dir, tmp_path):
    from toolrl_jax.train.trainer import Trainer

    gae = Trainer(_cfg(tiny_model_dir, tmp_path / "gae", 1))
    state = gae.initial_state()
    assert isinstance(state, ActorCriticState) and gae.critic is not None
    head = state.critic.params["value_head"]
    assert float(np.abs(np.asarray(head["kernel"])).sum()) == 0.0  # zero-initialised head
    # the critic's decoder starts from the policy's weights (a copy)
    import jax

    policy_leaves = jax.tree.leaves_with_path(state.policy.params)
    critic_tree = state.critic.params["decoder"]
    assert len(policy_leaves) == len(jax.tree.leaves(critic_tree)) + (
        0 if gae.model_config.tie_word_embeddings else 1)
    for path, leaf in policy_leaves:
        keys = [getattr(k, "key", k) for k in path]
        if keys[0] == "lm_head":
            continue
        other = critic_tree
        for k in keys:
            other = other[k]
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(other))
    assert gae.cfg.critic.optim.total_steps == 1 * 2  # derived: steps x critic mini-batches

    grpo_cfg = load_config(TrainConfig, None, [
        f"model.name={tiny_model_dir}", f"train.out_dir={tmp_path / 'grpo'}", "train.steps=1",
        "data.num_train=8", "data.num_eval=1", "data.prompt_style=compact",
        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2"])
    grpo = Trainer(grpo_cfg)
    assert isinstance(grpo.initial_state(), TrainState) and grpo.critic is None


@pytest.mark.parametrize("override, message", [
    ("critic.warmup_steps=3", r"critic: set, but algo\.advantage\.estimator=grpo uses no critic"),
    ("algo.gae.lam=0.95", r"algo\.gae: set, but .*estimator=gae"),
    ("critic.ppo_epochs=0", r"critic\.ppo_epochs"),
    ("critic.optim.learning_rate=.nan", r"critic\.optim\.learning_rate"),
])
def test_critic_settings_without_a_critic_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_critic_minibatches_must_divide_the_batch():
    with pytest.raises(ConfigError, match=r"critic\.ppo_minibatches=3 must divide"):
        load_config(TrainConfig, None, ["algo.advantage.estimator=gae",
                                        "rollout.prompts_per_step=2",
                                        "rollout.samples_per_prompt=2",
                                        "critic.ppo_minibatches=3"])
