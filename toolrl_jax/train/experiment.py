"""Experiments: arms trained from one recipe, each scored on one held-out suite, with CIs.

An experiment (``toolrl-jax experiment --config configs/experiment_smollm2.yaml``) is

    for seed in seeds, for arm in arms:
        cfg   = train_config + arm's overrides (+ seed, out_dir)      # the one config tree
        model = Trainer(cfg).train()                                  # SFT / RL as cfg says
        score every item of the suite with greedy decoding            # same items for all arms
    table: mean per benchmark with a 95% percentile-bootstrap interval over items, and the
           paired difference of every arm to the baseline arm on the same items (its interval
           and p-value, ``toolrl_jax.eval.stats``)

An arm is only a set of dotted overrides of the training recipe (``base``: no training;
``sft``: SFT only; ``grpo_cold``: RL from the instruct model; ``sft_grpo``; ``ppo``; the ToolRL
reward ablations ``reward.toolrl.variant=coarse|finegrained|length``), so a new arm is a YAML
entry, and the same file with a paper-scale ``train_config`` (e.g. configs/toolrl_qwen2.5_7b.yaml)
runs ToolRL's comparison on a GPU or TPU unchanged.

The suite (:class:`SuiteConfig`): generated tasks held out from the training stream (questions
never trained on), API-Bank levels 1-2, BFCL non-live categories (bfcl-eval's checker) and
ToolRL's test split; an item scores 1 when the answer is right (exact match of the calls /
BFCL's AST checker), else 0. With several seeds an item's score is its mean over the seeds.

Nothing is lost on a crash: each (arm, seed) writes ``OUT/<arm>/seed<k>/suite.json`` when done
and is skipped when that file exists; an interrupted training resumes from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from toolrl_jax.config_io import load_config
from toolrl_jax.errors import ConfigError
from toolrl_jax.eval.predict import make_predict_fn
from toolrl_jax.eval.run import run_benchmark
from toolrl_jax.eval.stats import bootstrap_ci, paired_bootstrap
from toolrl_jax.eval.toolrl import evaluate_toolrl
from toolrl_jax.train.config import TrainConfig
from toolrl_jax.train.metrics import read_metrics
from toolrl_jax.train.sources import DATA_SOURCES
from toolrl_jax.train.trainer import Trainer

Log = Callable[[str], None]

DEFAULT_ARMS: dict[str, dict[str, Any]] = {
    "base": {"sft.steps": 0, "train.steps": 0},
    "sft": {"train.steps": 0},
    "grpo_cold": {"sft.steps": 0},
    "sft_grpo": {},
    "coarse": {"sft.steps": 0, "reward.toolrl.variant": "coarse"},
    "finegrained": {"sft.steps": 0, "reward.toolrl.variant": "finegrained"},
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SuiteConfig:
    """The held-out items every arm is scored on (the YAML ``suite:`` section).

    Attributes:
      generated: generated tasks held out from the training recipe's data stream (questions
        never seen in training; 0 = none). They follow the recipe's ``data`` settings.
      apibank: API-Bank files in ToolRL's processed format ([] = none).
      apibank_limit: items per API-Bank file (0 = all).
      bfcl: BFCL non-live categories scored by bfcl-eval's checker ([] = none).
      bfcl_limit: items per BFCL category (0 = all).
      toolrl_test: ToolRL's test split (verl parquet or raw JSON; "" = none).
      toolrl_limit: items of the test split (0 = all).
      max_new_tokens: greedy decoding budget per answer.
      max_prompt_tokens: longer prompts are answered with "" (and so score 0).
      batch_size: decoding slots.
      tasks_per_call: tasks handed to the decoder at once; its slots refill from them as
        answers end (``eval.predict``), so a call should hold many decoding batches.
    """

    generated: int = 200
    apibank: tuple[str, ...] = ("../shared/data/apibank/level-1-api_processed.json",
                                "../shared/data/apibank/level-2-api_processed.json")
    apibank_limit: int = 0
    bfcl: tuple[str, ...] = ("simple", "multiple", "parallel")
    bfcl_limit: int = 0
    toolrl_test: str = "../shared/data/toolrl/rlla_test.parquet"
    toolrl_limit: int = 0
    max_new_tokens: int = 256
    max_prompt_tokens: int = 2048
    batch_size: int = 16
    tasks_per_call: int = 256

    def __post_init__(self) -> None:
        for name in ("generated", "apibank_limit", "bfcl_limit", "toolrl_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"suite.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("max_new_tokens", "max_prompt_tokens", "batch_size", "tasks_per_call"):
            if getattr(self, name) < 1:
                raise ConfigError(f"suite.{name}: must be >= 1, got {getattr(self, name)}")

    def check_files(self) -> None:
        """Every named file exists (else a ConfigError naming the key and the fix)."""
        for key, paths in (("suite.apibank", self.apibank),
                           ("suite.toolrl_test", (self.toolrl_test,) if self.toolrl_test else ())):
            for p in paths:
                if not pathlib.Path(p).is_file():
                    empty = "[]" if key == "suite.apibank" else '""'
                    raise ConfigError(f"{key}: {p} not found; give the right path or set "
                                      f"{key}={empty} to leave it out")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """The experiment file.

    Attributes:
      train_config: the training recipe every arm starts from (a YAML path).
      out_dir: experiment directory (one run directory per arm and seed, the tables).
      seeds: training seeds (``train.seed``); each arm runs once per seed.
      arms: arm name -> dotted overrides of the recipe (``{sft.steps: 0}``). A mapping given in
        YAML replaces the default arms.
      common: dotted overrides every arm gets before its own (``{train.checkpoint_every: 10}``).
      baseline: the arm every other arm is compared with, item by item.
      suite: :class:`SuiteConfig`.
      resamples: bootstrap resamples per interval.
      smoke_steps: with ``--smoke``, SFT and RL steps are capped at this (and the suite at
        ``smoke_items`` items per benchmark), to check that every arm runs.
      smoke_items: suite items per benchmark with ``--smoke``.
    """

    train_config: str = "configs/demo.yaml"
    out_dir: str = "runs/experiment"
    seeds: tuple[int, ...] = (0,)
    arms: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_ARMS))
    common: dict[str, Any] = dataclasses.field(default_factory=dict)
    baseline: str = "base"
    suite: SuiteConfig = dataclasses.field(default_factory=SuiteConfig)
    resamples: int = 2000
    smoke_steps: int = 1
    smoke_items: int = 4

    def __post_init__(self) -> None:
        if not self.arms:
            raise ConfigError("arms: give at least one arm, e.g. arms: {base: {train.steps: 0}}")
        for name, overrides in self.arms.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"arms.{name}: expected a mapping of dotted overrides "
                                  "(e.g. {sft.steps: 0}), or {} for the recipe as is")
        if self.baseline not in self.arms:
            raise ConfigError(f"baseline: {self.baseline!r} is not an arm; use one of "
                              f"{', '.join(self.arms)}")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed, e.g. seeds: [0]")
        if self.resamples < 100:
            raise ConfigError(f"resamples: use at least 100, got {self.resamples}")

    def smoke(self) -> ExperimentConfig:
        """The same experiment, capped for a quick check (``--smoke``)."""
        n = self.smoke_items
        s = self.suite
        suite = dataclasses.replace(
            s, generated=min(s.generated, n), apibank_limit=n, bfcl_limit=max(1, n // 4),
            toolrl_limit=n, max_new_tokens=min(s.max_new_tokens, 32))
        return dataclasses.replace(self, suite=suite, out_dir=f"{self.out_dir}/smoke",
                                   resamples=200)


@dataclasses.dataclass(frozen=True)
class ArmResult:
    """One (arm, seed): per-benchmark item ids and scores, and how long it took."""

    arm: str
    seed: int
    scores: dict[str, dict[str, list]]  # benchmark -> {"ids": [...], "scores": [...]}
    train_seconds: float
    eval_seconds: float
    run_dir: str
    overrides: list[str]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def arm_overrides(exp: ExperimentConfig, arm: str, seed: int) -> list[str]:
    """The dotted overrides of ``arm`` (as ``key=value`` strings, JSON-valued) plus its seed and
    run directory."""
    merged = {**exp.common, **exp.arms[arm]}
    items = [f"{k}={json.dumps(v)}" for k, v in merged.items()]
    items += [f"train.seed={seed}", f"train.out_dir={exp.out_dir}/{arm}/seed{seed}",
              "train.plot=false"]
    return items


SFT_KEYS = ("model", "lora", "data", "sft", "optim")  # with train.seed: what SFT depends on


def arm_config(exp: ExperimentConfig, arm: str, seed: int, *, smoke: bool = False) -> TrainConfig:
    """The train config of ``arm`` with ``seed``: the recipe, ``common``, then the arm's
    overrides; with ``smoke``, SFT and RL steps capped at ``exp.smoke_steps``."""
    cfg = load_config(TrainConfig, exp.train_config, arm_overrides(exp, arm, seed))
    return _cap_steps(cfg, exp.smoke_steps) if smoke else cfg


def reuse_sft(exp: ExperimentConfig, arm: str, seed: int, cfg: TrainConfig, run_dir: pathlib.Path,
              log: Log, *, smoke: bool = False) -> str | None:
    """Copies another arm's finished SFT checkpoint (``checkpoints_sft/<sft.steps>``) into
    ``run_dir`` when ``arm`` starts with the same SFT (same model, data, SFT, optimiser and
    seed) and has no checkpoint yet; ``Trainer.sft`` then resumes at the end of SFT, so the SFT
    of ``sft``, ``sft_grpo`` and the reward ablations is trained once. Returns the source arm."""
    steps = cfg.sft.steps
    if steps <= 0 or (run_dir / "checkpoints_sft").exists() or (run_dir / "checkpoints").exists():
        return None
    for other in exp.arms:
        source = pathlib.Path(exp.out_dir) / other / f"seed{seed}" / "checkpoints_sft" / str(steps)
        if other == arm or not source.is_dir():
            continue
        theirs = arm_config(exp, other, seed, smoke=smoke)
        if (all(getattr(theirs, k) == getattr(cfg, k) for k in SFT_KEYS)
                and theirs.train.seed == cfg.train.seed):
            shutil.copytree(source, run_dir / "checkpoints_sft" / str(steps))
            log(f"experiment: {arm} starts from the SFT checkpoint of {other} ({source})")
            return other
    return None


def _cap_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    train = dataclasses.replace(cfg.train, steps=min(cfg.train.steps, steps), eval_limit=2)
    sft = dataclasses.replace(cfg.sft, steps=min(cfg.sft.steps, steps))
    return dataclasses.replace(cfg, train=train, sft=sft)


def suite_scores(trainer: Trainer, suite: SuiteConfig, log: Log) -> dict[str, dict[str, list]]:
    """Greedy answers of the trainer's current model on every suite item, scored 1/0; one log
    line per benchmark (items, mean score, seconds)."""
    predict = make_predict_fn(trainer.model, trainer.tokenizer, trainer.template,
                              max_new_tokens=suite.max_new_tokens, batch_size=suite.batch_size,
                              max_prompt_tokens=suite.max_prompt_tokens, log=log)
    out: dict[str, dict[str, list]] = {}
    t0 = time.perf_counter()

    def add(name: str, result: dict, key: str) -> None:
        nonlocal t0
        out[name] = _entries(result, key)
        scores = out[name]["scores"]
        log(f"suite: {name}: {len(scores)} items, mean {np.mean(scores) if scores else 0.0:.3f}, "
            f"{time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()

    if suite.generated:
        data = dataclasses.replace(trainer.cfg.data, num_eval=suite.generated)
        tasks = DATA_SOURCES.get("generated")(data).heldout
        add("generated", evaluate_toolrl(predict, tasks, batch_size=suite.tasks_per_call),
            "exact_match")
    for path in suite.apibank:
        res = run_benchmark("apibank", predict, data=[path], limit=suite.apibank_limit or None,
                            batch_size=suite.tasks_per_call)
        level = "level-2" if "level-2" in pathlib.Path(path).name else "level-1"
        add(f"apibank_{level}", res, "valid")
    for category in suite.bfcl:
        res = run_benchmark("bfcl", predict, categories=[category],
                            limit=suite.bfcl_limit or None, batch_size=suite.tasks_per_call)
        add(f"bfcl_{category}", res, "valid")
    if suite.toolrl_test:
        res = run_benchmark("toolrl", predict, data=suite.toolrl_test,
                            limit=suite.toolrl_limit or None, batch_size=suite.tasks_per_call)
        add("toolrl_test", res, "exact_match")
    return out


def _entries(result: dict, key: str) -> dict[str, list]:
    entries = result.get("entries", [])
    return {"ids": [str(e.get("id", i)) for i, e in enumerate(entries)],
            "scores": [float(bool(e.get(key))) for e in entries]}


def run_arm(exp: ExperimentConfig, arm: str, seed: int, *, smoke: bool = False,
            log: Log = print) -> ArmResult:
    """Trains ``arm`` with ``seed`` (or loads its finished result) and scores the suite."""
    run_dir = pathlib.Path(exp.out_dir) / arm / f"seed{seed}"
    done = run_dir / "suite.json"
    if done.exists():
        log(f"experiment: {arm} seed {seed} already done ({done})")
        return ArmResult(**json.loads(done.read_text()))
    overrides = arm_overrides(exp, arm, seed)
    cfg = arm_config(exp, arm, seed, smoke=smoke)
    reuse_sft(exp, arm, seed, cfg, run_dir, log, smoke=smoke)
    log(f"experiment: arm {arm} seed {seed}: toolrl-jax train --config {exp.train_config} "
        f"{' '.join(overrides)}")
    t0 = time.perf_counter()
    trainer = Trainer(cfg, log=log)
    trainer.train(hooks=None)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = suite_scores(trainer, exp.suite, log)
    result = ArmResult(arm=arm, seed=seed, scores=scores, train_seconds=train_s,
                       eval_seconds=time.perf_counter() - t0, run_dir=str(run_dir),
                       overrides=overrides)
    done.write_text(json.dumps(result.to_json()))
    del trainer
    gc.collect()
    return result


def run_experiment(exp: ExperimentConfig, *, arms: Sequence[str] | None = None,
                   smoke: bool = False, log: Log = print) -> dict:
    """Every (arm, seed), then the tables: ``OUT/results.json``, ``OUT/results.md`` and
    ``OUT/curves.png``. Returns the results."""
    if smoke:
        exp = exp.smoke()
    exp.suite.check_files()
    names = list(arms) if arms else list(exp.arms)
    for name in names:
        if name not in exp.arms:
            raise ConfigError(f"--arms: {name!r} is not an arm; use one of {', '.join(exp.arms)}")
    if exp.baseline not in names:
        names = [exp.baseline] + names
    results = [run_arm(exp, a, s, smoke=smoke, log=log) for s in exp.seeds for a in names]
    table = summarize(results, baseline=exp.baseline, resamples=exp.resamples)
    out = pathlib.Path(exp.out_dir)
    (out / "results.json").write_text(json.dumps(table, indent=2))
    (out / "results.md").write_text(format_markdown(table, exp))
    table["curves"] = str(plot_curves(results, out / "curves.png"))
    return table


# ----------------------------------------------------------------------------- the tables
def _item_means(results: Sequence[ArmResult], arm: str, bench: str) -> dict[str, float]:
    """Item id -> mean score over the arm's seeds (items every seed scored)."""
    per_seed = [dict(zip(r.scores[bench]["ids"], r.scores[bench]["scores"]))
                for r in results if r.arm == arm and bench in r.scores]
    common = set.intersection(*(set(d) for d in per_seed)) if per_seed else set()
    return {i: float(np.mean([d[i] for d in per_seed])) for i in sorted(common)}


def summarize(results: Sequence[ArmResult], *, baseline: str, resamples: int = 2000) -> dict:
    """Per arm and benchmark (and ``all``: every item pooled): the mean with its interval, and
    the paired difference to ``baseline`` on the items both scored."""
    arms = list(dict.fromkeys(r.arm for r in results))
    benches = list(dict.fromkeys(b for r in results for b in r.scores))
    table: dict[str, Any] = {"arms": {}, "benchmarks": benches + ["all"], "baseline": baseline}
    items = {(a, b): _item_means(results, a, b) for a in arms for b in benches}
    for a in arms:
        rows: dict[str, Any] = {}
        for b in benches + ["all"]:
            mine = (items[a, b] if b != "all" else
                    {f"{bb}/{i}": v for bb in benches for i, v in items[a, bb].items()})
            base = (items[baseline, b] if b != "all" else
                    {f"{bb}/{i}": v for bb in benches for i, v in items[baseline, bb].items()})
            if not mine:
                continue
            ci = bootstrap_ci(list(mine.values()), num_resamples=resamples)
            row = {"mean": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}
            common = sorted(set(mine) & set(base))
            if a != baseline and common:
                d = paired_bootstrap([mine[i] for i in common], [base[i] for i in common],
                                     num_resamples=resamples)
                row["vs_baseline"] = {"diff": d.estimate, "low": d.low, "high": d.high,
                                      "p_value": d.p_value, "n": d.n}
            rows[b] = row
        runs = [r for r in results if r.arm == a]
        table["arms"][a] = {"scores": rows, "seeds": [r.seed for r in runs],
                            "train_seconds": float(sum(r.train_seconds for r in runs)),
                            "eval_seconds": float(sum(r.eval_seconds for r in runs)),
                            "overrides": runs[0].overrides if runs else []}
    return table


def _cell(row: dict | None) -> str:
    if not row:
        return "–"
    return f"{100 * row['mean']:.1f} [{100 * row['low']:.1f}, {100 * row['high']:.1f}]"


def _diff_cell(row: dict | None) -> str:
    d = (row or {}).get("vs_baseline")
    if not d:
        return "–"
    return (f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] "
            f"p={d['p_value']:.3f}")


def format_markdown(table: dict, exp: ExperimentConfig) -> str:
    """Two tables in ToolRL's layout (arms x benchmarks): accuracy with 95% CIs, then the
    paired difference to the baseline; then each arm's command and durations."""
    benches = table["benchmarks"]
    head = "| arm | " + " | ".join(benches) + " |"
    rule = "|---" * (len(benches) + 1) + "|"
    lines = [f"Accuracy (%) with 95% bootstrap CIs over items (seeds {list(exp.seeds)}).", "",
             head, rule]
    for a, row in table["arms"].items():
        lines.append(f"| {a} | " + " | ".join(_cell(row["scores"].get(b)) for b in benches) + " |")
    note = (f"Paired difference to `{table['baseline']}` (percentage points, same items, "
            "95% CI, bootstrap p-value).")
    lines += ["", note, "", head, rule]
    for a, row in table["arms"].items():
        if a != table["baseline"]:
            lines.append(f"| {a} | " + " | ".join(_diff_cell(row["scores"].get(b))
                                                 for b in benches) + " |")
    lines += ["", "| arm | command | train s | eval s |", "|---|---|---|---|"]
    for a, row in table["arms"].items():
        cmd = f"toolrl-jax train --config {exp.train_config} {' '.join(row['overrides'])}"
        lines.append(f"| {a} | `{cmd}` | {row['train_seconds']:.0f} | {row['eval_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


CURVE_KEYS = ("reward", "reward/toolrl_format", "reward/toolrl_correctness", "response_length")


def plot_curves(results: Sequence[ArmResult], path: pathlib.Path) -> pathlib.Path | None:
    """One panel per training metric (``CURVE_KEYS``), one line per arm (first seed)."""
    import matplotlib  # lazy: optional dependency; the backend must be set before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for r in results:
        rows = [m for m in read_metrics(r.run_dir) if m.get("kind", "train") == "train"]
        if rows and r.arm not in runs:
            runs[r.arm] = rows
    if not runs:
        return None
    cols = len(CURVE_KEYS)
    fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 3), squeeze=False)
    for ax, key in zip(axes.flat, CURVE_KEYS):
        for arm, rows in runs.items():
            pts = [(m["step"], m[key]) for m in rows if isinstance(m.get(key), (int, float))
                   and math.isfinite(m[key])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=arm)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def load_experiment(path: str | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The experiment file plus dotted overrides (``suite.generated=50``)."""
    exp = load_config(ExperimentConfig, path, overrides)
    print(f"experiment: {len(exp.arms)} arms x {len(exp.seeds)} seeds -> {exp.out_dir}",
          file=sys.stderr)
    return exp
