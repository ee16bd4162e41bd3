"""`toolrl-jax train --config configs/X.yaml [key=value ...]`: GRPO (with optional SFT warm start)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe (see configs/); default: built-in defaults")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="dotted overrides, e.g. train.steps=10 optim.lr=1e-6")


def run(args) -> int:
    from toolrl_jax.config_io import load_config
    from toolrl_jax.train.config import TrainConfig
    from toolrl_jax.train.trainer import Trainer

    cfg = load_config(TrainConfig, args.config, args.overrides)
    trainer = Trainer(cfg)
    summary = trainer.train()
    print(json.dumps({k: v for k, v in summary.items() if k != "plots"}, indent=2))
    print(format_summary(summary, trainer.run_dir))
    return 0


# (header, key in an evaluation's metrics): a column is shown when some evaluation has its key
SUMMARY_COLUMNS = (
    ("reward", "reward"),
    ("format", "format"),                       # ToolRL's parts
    ("correct", "correctness"),
    ("exact match", "exact_match"),
    ("pass@1", "reward/retool_correct"),        # ReTool: mean of correct answers
    ("code use", "reward/retool_code"),         # share of answers that ran a cell
    ("cells", "reward/code_use_cells"),
    ("failed cells", "reward/code_use_failed_cells"),
    ("success", "reward/ftrl_success"),         # FTRL environments
    ("tokens", "response_length"),              # generated tokens per answer
)


def format_summary(summary: dict, run_dir) -> str:
    """A small table of the held-out evaluations (before / after SFT / after RL), with the
    :data:`SUMMARY_COLUMNS` that the run's evaluations report."""
    rows = [(name, summary.get(key)) for name, key in (
        ("before training", "before"), ("after SFT", "after_sft"), ("after RL", "after"))]
    rows = [(name, r) for name, r in rows if r]
    cols = [(h, k) for h, k in SUMMARY_COLUMNS if any(k in r for _, r in rows)]
    widths = [max(len(h), 6) for h, _ in cols]
    lines = ["", "  ".join([f"{'held-out tasks (greedy)':<24}"] + [h.rjust(w) for (h, _), w in
                                                                   zip(cols, widths)]),
             "  ".join(["-" * 24] + ["-" * w for w in widths])]
    for name, r in rows:
        cells = [f"{r[k]:{w}.2f}" if k in r else "-".rjust(w) for (_, k), w in zip(cols, widths)]
        lines.append("  ".join([f"{name:<24}"] + cells))
    lines.append(f"run directory: {run_dir} (metrics.jsonl, summary.json, checkpoints/, plots/)")
    return "\n".join(lines)
