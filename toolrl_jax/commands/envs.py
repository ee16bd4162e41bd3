"""`toolrl-jax envs build|check`: FTRL-style environments built from a scenario spec.

    toolrl-jax envs build --spec configs/envs/banking.yaml --out envs/banking [--num-tasks 250]
                          [--seed 0] [--levels single,parallel,...] [--distractors 3]
                          [--no-paraphrase] [--noise 0.0]
    toolrl-jax envs check envs/banking      # re-executes every ground truth; exit 1 if any misses

Format of specs and of the built directory: docs/envgen.md.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="envs_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build tool docs, tasks (JSONL) and a manifest from a spec")
    build.add_argument("--spec", required=True, help="scenario spec YAML (see configs/envs/)")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--num-tasks", type=int, default=250, help="tasks in all, split evenly over the levels")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--levels", default=None,
                       help="comma separated: single,parallel,sequential,multihop,missing_info (default: all)")
    build.add_argument("--distractors", type=int, default=3, help="extra tools shown per task")
    build.add_argument("--no-paraphrase", action="store_true", help="first phrase/connector only")
    build.add_argument("--noise", type=float, default=0.0, help="probability per call of noisy tool output")
    check = sub.add_parser("check", help="re-execute every ground truth of a built directory")
    check.add_argument("dir", help="a directory written by 'envs build'")


def _levels(text: str | None) -> tuple[str, ...]:
    from toolrl_jax.envgen.builder import LEVELS

    if not text:
        return LEVELS
    return tuple(x.strip() for x in text.split(",") if x.strip())


def run(args) -> int:
    from toolrl_jax.envgen.builder import BuildOptions, build_env_dir, check_env_dir

    if args.envs_command == "build":
        options = BuildOptions(num_tasks=args.num_tasks, seed=args.seed, levels=_levels(args.levels),
                               distractors=args.distractors, paraphrase=not args.no_paraphrase, noise=args.noise)
        manifest = build_env_dir(args.spec, args.out, options)
        print(f"{manifest['domain']}: {manifest['num_tasks']} tasks -> {args.out}")
        for level in options.levels:
            made = manifest["tasks_per_level"].get(level, 0)
            dropped = manifest["discarded"].get(level, {})
            extra = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items()))
            print(f"  {level:<13} {made:>5} tasks" + (f"   discarded: {extra}" if extra else ""))
            if made == 0:
                print(f"  warning: the spec gives no '{level}' task (see docs/envgen.md)", file=sys.stderr)
        return 0
    report = check_env_dir(args.dir)
    print(f"{'level':<13} {'tasks':>6} {'complete':>9} {'sub-goals reached':>18}")
    for level, row in report.per_level.items():
        print(f"{level:<13} {row['tasks']:>6} {row['complete']:>9} {row['reached']:>9}/{row['subgoals']:<8}")
    for task_id, why in report.failures[:20]:
        print(f"FAIL {task_id}: {why}")
    if len(report.failures) > 20:
        print(f"... and {len(report.failures) - 20} more failures")
    print("ok: every ground truth reaches all its sub-goals" if report.ok
          else f"{len(report.failures)} ground truths miss sub-goals")
    return 0 if report.ok else 1
