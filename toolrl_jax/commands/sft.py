"""`toolrl-jax sft --config configs/X.yaml [key=value ...]`: supervised warm start only.

Runs the ``sft`` section of a training config (assistant tokens only), evaluates on the
held-out tasks and exports the result as an HF directory ``train.out_dir/sft_model``, which
feeds GRPO: ``toolrl-jax train --config X.yaml model.name=RUN_DIR/sft_model sft.steps=0``.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML recipe with an sft section")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides")


def run(args) -> int:
    from toolrl_jax.config_io import load_config
    from toolrl_jax.errors import ConfigError
    from toolrl_jax.models.export import export_hf_dir
    from toolrl_jax.train.config import TrainConfig
    from toolrl_jax.train.metrics import MetricsLogger
    from toolrl_jax.train.trainer import Trainer

    cfg = load_config(TrainConfig, args.config, args.overrides)
    if cfg.sft.steps <= 0:
        raise ConfigError("sft.steps: must be > 0 for `toolrl-jax sft` (e.g. sft.steps=100)")
    trainer = Trainer(cfg)
    run_metrics = MetricsLogger(trainer.run_dir, config=cfg.metrics)
    try:
        metrics = trainer.sft(run_metrics)
        result = trainer.evaluate(0, cfg.train.eval_limit)
        run_metrics.log(cfg.sft.steps, result, kind="eval_after_sft")
    finally:
        run_metrics.close()
    out = trainer.run_dir / "sft_model"
    export_hf_dir(trainer.model, trainer.model_config, out, tokenizer=trainer.tokenizer)
    print(json.dumps({"sft": metrics, "eval": result, "model": str(out)}, indent=2))
    return 0
