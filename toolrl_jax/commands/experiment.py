"""`toolrl-jax experiment --config configs/experiment_smollm2.yaml [--smoke] [--arms a,b]`:
train every arm of an experiment and score each on one held-out suite, with bootstrap CIs
(``toolrl_jax.train.experiment``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="experiment YAML (see configs/experiment_smollm2.yaml); default: "
                             "the built-in arms on configs/demo.yaml")
    parser.add_argument("--smoke", action="store_true",
                        help="every arm for smoke_steps steps on smoke_items items per "
                             "benchmark (a quick check that all arms run)")
    parser.add_argument("--arms", default="", help="comma-separated arms to run (default: all)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="dotted overrides of the experiment file, e.g. suite.generated=50")


def run(args) -> int:
    from toolrl_jax.train.experiment import load_experiment, run_experiment

    exp = load_experiment(args.config, args.overrides)
    arms = [a for a in args.arms.split(",") if a]
    table = run_experiment(exp, arms=arms or None, smoke=args.smoke)
    print(f"results: {exp.out_dir}{'/smoke' if args.smoke else ''}/results.md "
          f"(curves: {table.get('curves')})")
    return 0
