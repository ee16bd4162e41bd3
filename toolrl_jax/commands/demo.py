"""`toolrl-jax demo`: `train --config configs/demo.yaml` (SmolLM2-135M-Instruct, generated tasks)."""

from __future__ import annotations

import argparse
import pathlib


def _demo_config() -> pathlib.Path:
    import sysconfig

    here = pathlib.Path(__file__).resolve()
    installed = pathlib.Path(sysconfig.get_path("data")) / "share" / "toolrl-jax" / "configs"
    for cand in (here.parents[2] / "configs" / "demo.yaml", pathlib.Path("configs/demo.yaml"),
                 installed / "demo.yaml"):  # the last: a wheel install (pyproject data-files)
        if cand.is_file():
            return cand
    from toolrl_jax.errors import ConfigError

    raise ConfigError("configs/demo.yaml not found: run from the repository root")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides")


def run(args) -> int:
    from toolrl_jax.commands import train

    ns = argparse.Namespace(config=str(_demo_config()), overrides=args.overrides)
    return train.run(ns)
