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


def format_summary(summary: dict, run_dir) -> str:
    """A small table of the held-out evaluations (before / after SFT / after RL)."""
    rows = [("before training", summary.get("before")), ("after SFT", summary.get("after_sft")),
            ("after RL", summary.get("after"))]
    lines = ["", "held-out tasks (greedy)   reward  format  correct  exact match",
             "------------------------  ------  ------  -------  -----------"]
    nan = float("nan")
    for name, r in rows:
        if r:
            lines.append(f"{name:<24}  {r['reward']:6.2f}  {r.get('format', nan):6.2f}  "
                         f"{r.get('correctness', nan):7.2f}  {r['exact_match']:11.2f}")
    lines.append(f"run directory: {run_dir} (metrics.jsonl, summary.json, checkpoints/, plots/)")
    return "\n".join(lines)
