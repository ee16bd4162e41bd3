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
    summary = Trainer(cfg).train()
    print(json.dumps({k: v for k, v in summary.items() if k != "plots"}, indent=2))
    return 0
