"""The composable trainer: one config tree, registries, staged steps, dynamic sampling.

Config and registry checks are fast; the rest runs real (tiny) trainers and is marked slow.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import typing

import numpy as np
import pytest
import yaml

from toolrl_jax.config_io import load_config
from toolrl_jax.errors import ConfigError
from toolrl_jax.rl.advantages import ESTIMATORS
from toolrl_jax.rl.train_step import split_model
from toolrl_jax.rollout.trajectory import Trajectory, TrajectoryRecord
from toolrl_jax.train.config import TrainConfig
from toolrl_jax.train.environments import ENVIRONMENTS
from toolrl_jax.train.rewards import REWARD_COMPONENTS
from toolrl_jax.train.sources import DATA_SOURCES
from toolrl_jax.train.strategies import ROLLOUT_STRATEGIES, PromptDraw, RolloutBatch

REPO = pathlib.Path(__file__).resolve().parents[2]


def _leaves(cls, prefix=""):
    """``(dotted path, default)`` of every leaf field of a config dataclass tree."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], path + ".")
        else:
            yield path, getattr(defaults, f.name)


def _get(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_field_of_every_component_has_a_yaml_path():
    leaves = list(_leaves(TrainConfig))
    assert len(leaves) > 90, len(leaves)
    for path, default in leaves:
        value = list(default) if isinstance(default, tuple) else default
        override = f"{path}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        cfg = load_config(TrainConfig, None, [override])
        assert _get(cfg, path) == default, path
    # the settings the review found unreachable
    cfg = load_config(TrainConfig, None, [
        "reward.components.otc=0.5", "reward.otc.alpha=2.0", "algo.loss.tis_cap=2.0",
        "algo.advantage.estimator=group_mean_batch_std", "algo.vocab_chunk=1024",
        "optim.moment_dtype=bfloat16", "optim.min_lr_ratio=0.1",
        "env.name=generated_tools", "env.observation_format=hermes", "env.tool_call_syntax=hermes",
        "rollout.max_turns=2",
    ])
    assert cfg.reward.components == {"toolrl": 1.0, "otc": 0.5}  # merged onto the default
    assert (cfg.reward.otc.alpha, cfg.algo.loss.tis_cap, cfg.algo.vocab_chunk) == (2.0, 2.0, 1024)
    assert cfg.algo.advantage.estimator == "group_mean_batch_std"
    assert (cfg.optim.moment_dtype, cfg.optim.min_lr_ratio) == ("bfloat16", 0.1)
    assert (cfg.env.observation_format, cfg.env.tool_call_syntax) == ("hermes", "hermes")


@pytest.mark.parametrize("override, message", [
    ("data.source=generatd", r"data\.source: unknown data source 'generatd'\. did you mean 'generated'"),
    ("env.name=bfcl_multiturn", r"env\.name: unknown environment .*did you mean 'bfcl_multi_turn'"),
    ("reward.components.otcc=1.0", r"reward\.components: unknown reward component 'otcc'.*'otc'"),
    ("algo.advantage.estimator=rlo", r"algo\.advantage\.estimator: .*did you mean 'rloo'"),
    ("rollout.strategy=group", r"rollout\.strategy: .*did you mean 'groups'"),
    ("reward.components.toolrl=0", r"at least one component a non-zero weight"),
    ("rollout.max_turns=3", r"env\.name"),
    ("optim.lr=1e-3", r"unknown config key 'optim\.lr': did you mean 'learning_rate'"),
])
def test_registry_and_config_errors_name_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_registries_list_the_builtins():
    assert {"grpo", "dr_grpo", "rloo", "batch_norm", "group_mean_batch_std"} <= set(ESTIMATORS)
    assert {"toolrl", "otc", "overlong", "tool_star", "retool"} <= set(REWARD_COMPONENTS)
    assert {"generated", "toolrl", "apibank", "bfcl", "bfcl_multi_turn", "envgen"} <= set(DATA_SOURCES)
    assert {"math", "math_generated"} <= set(DATA_SOURCES)
    assert {"none", "generated_tools", "bfcl_multi_turn", "envgen", "code_interpreter"} <= set(ENVIRONMENTS)
    assert {"ftrl", "code_use"} <= set(REWARD_COMPONENTS)
    assert "groups" in ROLLOUT_STRATEGIES


# ----------------------------------------------------------------------------- tiny trainers
def _overrides(model_dir, out_dir, *extra):
    return [f"model.name={model_dir}", f"train.out_dir={out_dir}", "train.steps=1",
            "train.plot=false", "data.num_train=8", "data.num_eval=2",
            "data.prompt_style=compact", "rollout.prompts_per_step=2",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6", "rollout.num_slots=4",
            "algo.ppo_minibatches=2", "algo.micro_batch_size=2", "optim.learning_rate=1e-3",
            *extra]


def _one_step(cfg):
    from toolrl_jax.train.trainer import Trainer

    trainer = Trainer(cfg)
    state = trainer.learner.init_state(split_model(trainer.model)[1], seed=0)
    _, metrics = trainer.step(state, 0)
    return trainer, metrics


#: components that only score their own kind of task, run with that data source below
OWN_DATA_COMPONENTS = {"ftrl": "envgen", "bfcl": "bfcl_multi_turn"}


@pytest.mark.slow
def test_every_reward_component_in_one_step(tiny_model_dir, tmp_path):
    # the library's components (other test modules register their own at import)
    names = [n for n in REWARD_COMPONENTS.names() if n not in OWN_DATA_COMPONENTS
             and REWARD_COMPONENTS.get(n).__module__.startswith("toolrl_jax.")]
    weights = ",".join(f"{name}: 1.0" for name in names)
    cfg = load_config(TrainConfig, None, _overrides(tiny_model_dir, tmp_path,
                                                    f"reward.components={{{weights}}}"))
    _, m = _one_step(cfg)
    for name in names:
        assert math.isfinite(m[f"reward/{name}"]), name
    parts = sum(m[f"reward/{name}"] for name in names)
    assert m["reward"] == pytest.approx(parts, rel=1e-5, abs=1e-5)  # R = sum_c w_c r_c
    assert math.isfinite(m["loss"]) and m["groups"] == 2


SOURCES = [  # (data source, environment, extra overrides); together they cover every entry
    ("generated", "none", []),
    ("generated", "generated_tools", ["rollout.max_turns=2", "rollout.max_obs_tokens=16"]),
    ("toolrl", "none", ["data.path={data}/toolrl/rlla_test.parquet", "data.max_prompt_tokens=1024"]),
    ("apibank", "none", ["data.path={data}/apibank/level-1-api_processed.json",
                         "data.max_prompt_tokens=1024"]),
    ("bfcl", "none", ["data.path=simple_python", "data.max_prompt_tokens=2048"]),
    ("bfcl_multi_turn", "bfcl_multi_turn", ["data.path=multi_turn_base", "rollout.max_turns=2",
                                            "rollout.max_obs_tokens=16",
                                            "data.max_prompt_tokens=100000",
                                            "reward.components={{toolrl: 1.0, bfcl: 1.0}}",
                                            "algo.advantage.estimator=turn_grpo"]),
    ("math", "none", ["data.path=aime24", "data.max_prompt_tokens=1024",
                      "reward.components={{toolrl: 0.0, retool: 1.0}}"]),
    ("math_generated", "code_interpreter", ["rollout.max_turns=2", "rollout.max_obs_tokens=64",
                                            "data.max_prompt_tokens=1024",
                                            "reward.components={{toolrl: 0.0, retool: 1.0, code_use: 1.0}}"]),
    ("envgen", "envgen", ["data.path={envs}", "rollout.max_turns=2", "rollout.max_obs_tokens=16",
                          "data.max_prompt_tokens=4096", "reward.components={{toolrl: 1.0, ftrl: 1.0}}"]),
]


@pytest.fixture(scope="module")
def built_env_dir(tmp_path_factory):
    from toolrl_jax.envgen import BuildOptions, build_env_dir

    out = tmp_path_factory.mktemp("banking_env")
    build_env_dir(REPO / "configs" / "envs" / "banking.yaml", out, BuildOptions(num_tasks=20))
    return out


def test_source_table_covers_every_registered_entry():
    sources = {s for s, _, _ in SOURCES} | {"toolrl_json", "toolrl_parquet"}  # aliases of toolrl
    assert sources == set(DATA_SOURCES.names())
    assert {e for _, e, _ in SOURCES} == set(ENVIRONMENTS.names())
    for name, source in OWN_DATA_COMPONENTS.items():
        assert any(s == source and f"{name}: 1.0" in " ".join(x) for s, _, x in SOURCES), name


@pytest.mark.slow
@pytest.mark.parametrize("source, env, extra", SOURCES, ids=[f"{s}-{e}" for s, e, _ in SOURCES])
def test_every_data_source_and_environment_one_step(tiny_model_dir, tmp_path, shared_data,
                                                    built_env_dir, source, env, extra):
    extra = [e.format(data=shared_data, envs=built_env_dir) for e in extra]
    cfg = load_config(TrainConfig, None, _overrides(tiny_model_dir, tmp_path, f"data.source={source}",
                                                    f"env.name={env}", *extra))
    trainer, m = _one_step(cfg)
    assert trainer.train_tasks and math.isfinite(m["loss"]) and math.isfinite(m["reward"])
    assert (trainer.environment is None) == (env == "none")
    if source == "envgen":
        assert 0.0 <= m["reward/ftrl"] <= 1.0 and "reward/ftrl_success" in m


# ----------------------------------------------------------------------------- dynamic sampling
CONSTANT_ROUNDS = 1  # round 0: every sample of a prompt is the ground truth (constant groups)


@ROLLOUT_STRATEGIES.register("scripted_constant_first", overwrite=True)
def scripted_constant_first(ctx, draw: PromptDraw) -> RolloutBatch:
    """A scripted policy: in the first round each group's samples are identical (all right),
    later rounds answer right in the first sample and wrongly in the others."""
    round_index = draw.seed // 100_000_007
    k = ctx.samples_per_prompt
    records, tasks = [], []
    eos = ctx.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for g, i in enumerate(draw.task_indices):
        task = ctx.train_tasks[int(i)]
        for s in range(k):
            right = round_index < CONSTANT_ROUNDS or s == 0
            text = task.ground_truth if right else "<think>no idea</think>"
            rec = TrajectoryRecord.from_prompt(len(records), g, ctx.train_prompts[int(i)])
            ids = ctx.tokenizer.encode(text, add_special_tokens=False) + [eos]
            rec.append_generated(ids, [0.0] * len(ids))
            rec.stop_reason = "eos"
            records.append(rec)
            tasks.append(task)
    traj = Trajectory.from_records(records, pad_id=0, pad_multiple=64)
    return RolloutBatch(trajectory=traj, tasks=tasks, group_ids=traj.group_ids,
                        num_groups=len(draw.task_indices))


@pytest.mark.slow
def test_dynamic_sampling_samples_more_prompts(tiny_model_dir, tmp_path):
    base = _overrides(tiny_model_dir, tmp_path, "rollout.strategy=scripted_constant_first",
                      "algo.loss.entropy_coef=0.0", "rollout.max_new_tokens=64")
    off, m_off = _one_step(load_config(TrainConfig, None, base))
    assert m_off["constant_groups"] == 2 and m_off["sampling_rounds"] == 1
    assert m_off["loss"] == 0.0  # constant groups: zero advantages, nothing to learn

    on_cfg = load_config(TrainConfig, None, base + ["algo.dynamic_sampling=true",
                                                    "algo.max_sampling_rounds=3"])
    trainer, m_on = _one_step(on_cfg)
    assert m_on["sampling_rounds"] == 2 and m_on["sampling_shortfall"] == 0
    assert m_on["constant_groups"] == 0 and m_on["groups"] == 2
    assert m_on["loss"] != 0.0
    collected = trainer.collect(0)
    batch = trainer.make_batch(collected)
    rows = (np.asarray(batch.loss_mask) > 0).any(1)
    assert rows.all() and len(rows) == 4  # a full batch of informative groups
    adv = np.asarray(batch.advantages).reshape(2, 2)
    assert (adv[:, 0] > 0).all() and (adv[:, 1] < 0).all()  # right first sample, wrong second


@pytest.mark.slow
def test_dynamic_sampling_fills_with_masked_constant_groups_when_rounds_run_out(tiny_model_dir,
                                                                                tmp_path):
    global CONSTANT_ROUNDS
    CONSTANT_ROUNDS = 10
    try:
        cfg = load_config(TrainConfig, None, _overrides(
            tiny_model_dir, tmp_path, "rollout.strategy=scripted_constant_first",
            "algo.dynamic_sampling=true", "algo.max_sampling_rounds=2",
            "rollout.max_new_tokens=64"))
        trainer, m = _one_step(cfg)
        assert m["sampling_rounds"] == 2 and m["sampling_shortfall"] == 2
        batch = trainer.make_batch(trainer.collect(0))
        assert float(np.asarray(batch.loss_mask).sum()) == 0.0  # filler rows carry no loss
    finally:
        CONSTANT_ROUNDS = 1


@pytest.mark.parametrize("override, key", [
    ("rollout.prompts_per_step=-1", "rollout.prompts_per_step"),
    ("rollout.samples_per_prompt=0", "rollout.samples_per_prompt"),
    ("sft.batch_size=-4", "sft.batch_size"),
    ("data.num_train=-8", "data.num_train"),
    ("data.num_eval=-1", "data.num_eval"),
    ("train.steps=-3", "train.steps"),
    ("optim.learning_rate=.nan", "optim.learning_rate"),
    ("algo.ppo_minibatches=0", "algo.ppo_minibatches"),
])
def test_bad_numbers_are_config_errors_naming_the_key(override, key):
    """Issue 10 item 8: each used to be a traceback or a silent wrong run."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TrainConfig, None, [override])


def test_cli_reports_a_bad_config_in_one_line(capsys):
    from toolrl_jax.cli import main

    assert main(["train", "rollout.samples_per_prompt=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rollout.samples_per_prompt" in err[0]


@pytest.mark.slow
def test_reward_shapes_too_small_for_the_data_fail_at_load(tiny_model_dir, tmp_path):
    """Issue 10 item 9: a ground truth with more arguments than reward.toolrl.max_args is an
    error naming the key when the trainer loads the data, not mid-run."""
    from toolrl_jax.train.trainer import Trainer

    cfg = load_config(TrainConfig, None, _overrides(tiny_model_dir, tmp_path,
                                                    "reward.toolrl.max_args=1"))
    with pytest.raises(ConfigError, match=r"reward\.toolrl\.max_calls=8 / max_args=1"):
        Trainer(cfg)
