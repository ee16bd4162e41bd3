"""End-to-end trainer on a tiny random model with the real SmolLM2 tokenizer.

Checks the whole loop (rollout -> reward -> advantages -> PPO update -> metrics -> checkpoint)
runs, writes what it promises, and that a run resumed from a checkpoint reproduces the metrics
of an uninterrupted run from the same data position.
"""

from __future__ import annotations

import json

import pytest

from toolrl_jax.config_io import load_config
from toolrl_jax.errors import ConfigError
from toolrl_jax.toolcalls import ToolCall
from toolrl_jax.train.config import TrainConfig
from toolrl_jax.train.metrics import read_metrics

pytestmark = pytest.mark.slow


def _cfg(model_dir, out_dir, steps, resume=True):
    return load_config(TrainConfig, None, [
        f"model.name={model_dir}", f"train.out_dir={out_dir}", f"train.steps={steps}",
        f"train.resume={str(resume).lower()}", "train.checkpoint_every=1", "train.plot=false",
        "data.num_train=8", "data.num_eval=2", "data.prompt_style=compact",
        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
        "algo.ppo_minibatches=2", "algo.micro_batch_size=2", "optim.learning_rate=1e-3",
        "sft.steps=1", "sft.batch_size=2", "sft.learning_rate=1e-3",
    ])


def test_train_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    from toolrl_jax.train.trainer import Trainer

    full = Trainer(_cfg(tiny_model_dir, tmp_path / "full", 3)).train()
    assert set(full) >= {"before", "after_sft", "after"}
    for key in ("reward", "format", "correctness", "exact_match"):
        assert key in full["after"]
    run = tmp_path / "full"
    assert (run / "resolved_config.yaml").exists() and (run / "summary.json").exists()
    recs = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for key in ("reward", "reward/toolrl", "reward/toolrl_format", "reward/toolrl_correctness",
                "loss", "grad_norm",
                "learning_rate", "clip_frac", "entropy", "time_rollout", "time_update"):
        assert key in recs[0], key

    # "killed" after step 2: a run that stops there, then a resumed run to step 3
    Trainer(_cfg(tiny_model_dir, tmp_path / "split", 2)).train()
    Trainer(_cfg(tiny_model_dir, tmp_path / "split", 3)).train()
    split = [r for r in read_metrics(tmp_path / "split") if r["kind"] == "train"]
    assert split[-1]["step"] == 3
    for key in ("reward", "loss", "grad_norm", "response_length"):
        assert split[-1][key] == pytest.approx(recs[-1][key], rel=1e-5, abs=1e-6), key
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    drop = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert drop(summary["before"]) == drop(full["before"])  # carried in the checkpoint


def test_bad_config_key_is_named():
    with pytest.raises(ConfigError, match=r"rollout\.max_new_tokenz.*max_new_tokens"):
        load_config(TrainConfig, None, ["rollout.max_new_tokenz=3"])


def test_multi_turn_mode_runs_tools(tiny_model_dir, tmp_path):
    """Multi-turn mode: the engine gets the executor of the generated tools; a call the policy
    writes is executed and its result appended (the scripted check is in tests/rollout)."""
    from toolrl_jax.train.trainer import Trainer

    cfg = load_config(TrainConfig, None, [
        f"model.name={tiny_model_dir}", f"train.out_dir={tmp_path}", "train.steps=1",
        "train.plot=false", "data.num_train=4", "data.num_eval=1", "data.prompt_style=compact",
        "env.name=generated_tools", "rollout.max_turns=2", "rollout.max_obs_tokens=32",
        "rollout.prompts_per_step=1", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
        "algo.ppo_minibatches=1", "algo.micro_batch_size=2",
    ])
    trainer = Trainer(cfg)
    engine = trainer.engine("train")
    assert engine.multi_turn
    [result] = engine.executor.run(0, [ToolCall("get_capital", {"country": "France"})])
    assert result.ok and "Paris" in result.text
    summary = trainer.train()
    assert "after" in summary


def test_bfcl_multi_turn_source_executes_bfcl_backends(tiny_model_dir, tmp_path):
    """data.source=bfcl_multi_turn: tasks from BFCL's multi_turn_base, the engine's executor
    runs calls on per-trajectory BFCL backends."""
    from toolrl_jax.train.trainer import Trainer

    cfg = load_config(TrainConfig, None, [
        f"model.name={tiny_model_dir}", f"train.out_dir={tmp_path}", "data.source=bfcl_multi_turn",
        "data.path=multi_turn_base", "data.num_eval=2", "data.max_prompt_tokens=100000",
        "env.name=bfcl_multi_turn", "rollout.max_turns=2",
    ])
    trainer = Trainer(cfg)
    task = trainer.train_tasks[0]
    assert "<tool_call>" in task.ground_truth
    executor = trainer.engine("train").executor
    executor.start("t0", task)
    first = task.ground_truth_calls[0]
    good, bad = executor.run("t0", [ToolCall(first["name"], first["arguments"]),
                                    ToolCall("no_such_function", {})])
    assert good.ok and "Error" not in good.text, good.text
    assert not bad.ok
    state = executor.finish("t0")
    assert state.call_strings and state.call_strings[0].startswith(first["name"])


def test_every_recipe_loads():
    import pathlib

    from toolrl_jax.train.experiment import ExperimentConfig

    for path in sorted(pathlib.Path(__file__).resolve().parents[2].glob("configs/*.yaml")):
        if path.name.startswith("experiment_"):  # experiment files: arms over a recipe
            exp = load_config(ExperimentConfig, path)
            load_config(TrainConfig, path.parents[1] / exp.train_config)
        else:
            load_config(TrainConfig, path)


def test_bad_batch_geometry_fails_before_training(tiny_model_dir, tmp_path):

    cfg = _cfg(tiny_model_dir, tmp_path, 1)
    with pytest.raises(ConfigError, match="ppo_minibatches=3 must divide"):
        load_config(TrainConfig, None, [f"model.name={tiny_model_dir}", f"train.out_dir={tmp_path}",
                                        "data.num_train=8", "data.num_eval=2",
                                        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
                                        "algo.ppo_minibatches=3"])
    assert cfg.algo.ppo_minibatches == 2


def test_kl_to_reference_is_computed_and_logged(tiny_model_dir, tmp_path):
    """kl_coef > 0: reference log-probs from the frozen initial policy feed the loss; the first
    update starts at the reference, so the KL is ~0 at step 1 and positive after updates."""
    import math

    from toolrl_jax.train.trainer import Trainer

    cfg = load_config(TrainConfig, None, [
        f"model.name={tiny_model_dir}", f"train.out_dir={tmp_path}", "train.steps=2",
        "train.plot=false", "data.num_train=8", "data.num_eval=1", "data.prompt_style=compact",
        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
        "algo.ppo_minibatches=2", "algo.micro_batch_size=2", "algo.loss.kl_coef=0.1",
        "optim.learning_rate=1e-2",
    ])
    Trainer(cfg).train()
    recs = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert all(math.isfinite(r["ref_kl"]) for r in recs)
    assert abs(recs[0]["ref_kl"]) < 1e-3
    assert recs[1]["ref_kl"] > 5 * abs(recs[0]["ref_kl"])  # the policy moved away from the reference
    assert "time_logprobs" in recs[0] and "time_ref_logprobs" in recs[0]


def test_eval_command_prints_table_and_writes_json(tiny_model_dir, tmp_path, shared_data, capsys):
    """`toolrl-jax eval` end to end on a tiny model: greedy answers, scores, table, JSON."""
    from toolrl_jax.cli import main

    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(tiny_model_dir), "--benchmark", "toolrl", "--data",
               str(shared_data / "toolrl" / "rlla_test.parquet"), "--limit", "3",
               "--max-new-tokens", "8", "--batch-size", "4", "--output", str(out)])
    assert rc == 0
    assert "Exact match" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert json.dumps(result).count('"exact_match"') >= 1


def test_non_finite_loss_stops_and_keeps_the_last_finite_checkpoint(tiny_model_dir, tmp_path):
    """lr 1e30: step 1 is finite, its update overflows the model, step 2's loss is NaN. The run
    stops with a TrainingError before saving step 2; the newest checkpoint is finite."""
    from toolrl_jax.errors import TrainingError
    from toolrl_jax.rl.train_step import split_model
    from toolrl_jax.train.checkpoint import Checkpointer, tree_all_finite
    from toolrl_jax.train.trainer import Trainer

    cfg = load_config(TrainConfig, None, [
        f"model.name={tiny_model_dir}", f"train.out_dir={tmp_path}", "train.steps=4",
        "train.plot=false", "train.checkpoint_every=1", "data.num_train=8", "data.num_eval=1",
        "data.prompt_style=compact", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=8", "algo.micro_batch_size=4", "optim.learning_rate=1e30",
        "optim.grad_clip_norm=null"])
    trainer = Trainer(cfg)
    with pytest.raises(TrainingError, match="not finite|NaN/inf"):
        trainer.train()
    ckpt = Checkpointer(tmp_path / "checkpoints", handle_sigterm=False)
    try:
        latest = ckpt.latest_step()
        assert latest is not None and latest < 4
        state, _ = ckpt.restore(trainer.learner.abstract_state(split_model(trainer.model)[1]))
        assert tree_all_finite(state.params)
    finally:
        ckpt.close()
