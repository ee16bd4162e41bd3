"""`toolrl-jax plot RUN_DIR`: PNG curves of a run's metrics.jsonl."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory containing metrics.jsonl")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/plots)")


def run(args) -> int:
    from toolrl_jax.train.metrics import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
