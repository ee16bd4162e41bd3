"""The experiment runner: tables from hand-made results (paired differences checked by hand),
and a smoke run of every arm on the tiny model (slow)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import yaml

from toolrl_jax.config_io import load_config
from toolrl_jax.errors import ConfigError
from toolrl_jax.train.experiment import (
    ArmResult,
    ExperimentConfig,
    arm_config,
    arm_overrides,
    format_markdown,
    reuse_sft,
    run_experiment,
    summarize,
)


def _result(arm, seed, scores):
    return ArmResult(arm=arm, seed=seed, train_seconds=1.0, eval_seconds=2.0, run_dir="/none",
                     overrides=[f"x={arm}"],
                     scores={b: {"ids": [str(i) for i in range(len(s))], "scores": list(s)}
                             for b, s in scores.items()})


def test_summary_means_and_paired_differences_by_hand():
    base = _result("base", 0, {"gen": [0, 0, 1, 0], "api": [1, 0]})
    sft = _result("sft", 0, {"gen": [1, 0, 1, 1], "api": [1, 1]})
    table = summarize([base, sft], baseline="base", resamples=500)
    rows = table["arms"]["sft"]["scores"]
    assert rows["gen"]["mean"] == pytest.approx(0.75)
    assert rows["api"]["mean"] == pytest.approx(1.0)
    assert rows["all"]["mean"] == pytest.approx(5 / 6) and rows["all"]["n"] == 6
    assert rows["gen"]["vs_baseline"]["diff"] == pytest.approx(0.5)
    assert rows["all"]["vs_baseline"]["diff"] == pytest.approx((5 - 2) / 6)
    assert "vs_baseline" not in table["arms"]["base"]["scores"]["gen"]
    assert rows["gen"]["low"] <= rows["gen"]["mean"] <= rows["gen"]["high"]
    md = format_markdown(table, ExperimentConfig(arms={"base": {}, "sft": {}}))
    assert "| sft | 75.0 [" in md and "+50.0 [" in md and "toolrl-jax train --config" in md


def test_several_seeds_average_an_item_over_its_seeds():
    runs = [_result("base", 0, {"gen": [0, 0]}), _result("base", 1, {"gen": [1, 0]}),
            _result("rl", 0, {"gen": [1, 1]}), _result("rl", 1, {"gen": [1, 0]})]
    table = summarize(runs, baseline="base", resamples=200)
    assert table["arms"]["base"]["scores"]["gen"]["mean"] == pytest.approx(0.25)
    assert table["arms"]["rl"]["scores"]["gen"]["vs_baseline"]["diff"] == pytest.approx(0.5)
    assert table["arms"]["rl"]["seeds"] == [0, 1]


def test_bad_experiment_files_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="baseline"):
        ExperimentConfig(arms={"sft": {}}, baseline="base")
    with pytest.raises(ConfigError, match="arms.sft"):
        ExperimentConfig(arms={"base": {}, "sft": "sft.steps=3"})
    missing = tmp_path / "nope.json"
    exp = load_config(ExperimentConfig, None, [f"suite.apibank=[{missing}]"])
    with pytest.raises(ConfigError, match="suite.apibank"):
        exp.suite.check_files()


def test_an_arm_with_the_same_sft_starts_from_the_finished_sft_checkpoint(tmp_path):
    arms = {"sft": {"train.steps": 0}, "sft_grpo": {}, "grpo_cold": {"sft.steps": 0},
            "sft_lr": {"sft.learning_rate": 0.5}}
    exp = load_config(ExperimentConfig, None, [
        "train_config=configs/demo.yaml", f"out_dir={tmp_path}", f"arms={json.dumps(arms)}",
        "baseline=sft", 'common={"sft.steps": 5}'])
    assert "sft.steps=5" in arm_overrides(exp, "sft_grpo", 0)
    finished = tmp_path / "sft" / "seed0" / "checkpoints_sft" / "5"
    finished.mkdir(parents=True)
    (finished / "weights").write_text("w")
    logs = []

    def reuse(arm, seed=0, smoke=False):
        cfg = arm_config(exp, arm, seed, smoke=smoke)
        return reuse_sft(exp, arm, seed, cfg, tmp_path / arm / f"seed{seed}", logs.append,
                         smoke=smoke)

    assert reuse("sft_grpo") == "sft"
    copied = tmp_path / "sft_grpo" / "seed0" / "checkpoints_sft" / "5" / "weights"
    assert copied.read_text() == "w" and "checkpoint of sft" in logs[-1]
    assert reuse("sft_grpo") is None  # it has its own checkpoint now
    assert reuse("grpo_cold") is None  # no SFT
    assert reuse("sft_lr") is None  # a different SFT
    assert reuse("sft_grpo", seed=1) is None  # another seed
    assert not (tmp_path / "sft_lr").exists()
    # --smoke caps both arms' SFT at smoke_steps (1) before comparing them
    smoke_ckpt = tmp_path / "sft" / "seed0" / "checkpoints_sft" / "1"
    smoke_ckpt.mkdir()
    (smoke_ckpt / "weights").write_text("s")
    assert reuse("sft_grpo", seed=2, smoke=True) is None  # sft's seed-2 run has no checkpoint
    shutil.copytree(smoke_ckpt, tmp_path / "sft" / "seed2" / "checkpoints_sft" / "1")
    assert reuse("sft_grpo", seed=2, smoke=True) == "sft"
    assert (tmp_path / "sft_grpo" / "seed2" / "checkpoints_sft" / "1" / "weights").read_text() == "s"


@pytest.mark.slow
def test_smoke_runs_every_arm(tiny_model_dir, tmp_path):
    recipe = {"model": {"name": str(tiny_model_dir)},
              "data": {"num_train": 8, "num_eval": 2, "prompt_style": "compact",
                       "min_tools": 1, "max_tools": 1},
              "rollout": {"prompts_per_step": 2, "samples_per_prompt": 2, "max_new_tokens": 6,
                          "num_slots": 4},
              "algo": {"micro_batch_size": 2}, "optim": {"learning_rate": 1e-3},
              "sft": {"steps": 3, "batch_size": 2, "max_tokens": 512},
              "train": {"steps": 3, "checkpoint_every": 1}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    arms = {"base": {"sft.steps": 0, "train.steps": 0}, "sft": {"train.steps": 0},
            "grpo_cold": {"sft.steps": 0}, "sft_grpo": {},
            "coarse": {"sft.steps": 0, "reward.toolrl.variant": "coarse"}}
    exp = load_config(ExperimentConfig, None, [
        f"train_config={tmp_path / 'recipe.yaml'}", f"out_dir={tmp_path / 'exp'}",
        f"arms={json.dumps(arms)}", "suite.generated=3", "suite.apibank=[]",
        "suite.bfcl=[simple]", "suite.toolrl_test=", "suite.max_new_tokens=8",
        "suite.batch_size=4", "smoke_items=4"])
    logs = []
    table = run_experiment(exp, smoke=True, log=logs.append)
    out = tmp_path / "exp" / "smoke"
    assert any("sft_grpo starts from the SFT checkpoint of sft" in m for m in logs)
    assert set(table["arms"]) == set(arms)
    for arm in arms:
        done = json.loads((out / arm / "seed0" / "suite.json").read_text())
        assert len(done["scores"]["generated"]["scores"]) == 3
        # "simple" is BFCL's simple_python / _java / _javascript, one item each
        assert len(done["scores"]["bfcl_simple"]["scores"]) == 3
    # capped at one step: the RL arms logged exactly one train record, the others none
    for arm, steps in (("grpo_cold", 1), ("sft_grpo", 1), ("base", 0), ("sft", 0)):
        lines = [json.loads(x) for x in (out / arm / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert sum(r.get("kind", "train") == "train" for r in lines) == steps, arm
    assert (out / "results.md").read_text().count("\n| ") >= 2 * len(arms)
    assert pathlib.Path(table["curves"]).is_file()
    # a second call finds every arm done and only rebuilds the tables
    again = run_experiment(exp, smoke=True, log=lambda m: None)
    assert np.isclose(again["arms"]["sft"]["scores"]["all"]["mean"],
                      table["arms"]["sft"]["scores"]["all"]["mean"])
