"""``toolrl-jax reward``: score a JSONL file of completions with the ToolRL reward.

Input lines: ``{"id": ..., "completion": "<assistant text>", "ground_truth": "<ToolRL target>",
"step": 0}`` (``step`` optional, default ``--step``). Output lines: ``{"id", "total", "format",
"correctness", "length"}`` in input order. A bad line is reported on stderr with its line number
and skipped; the others are scored (exit status 1 if any line was skipped, else 0). Bad lines:
not a JSON object, a missing or non-string field, a ``step`` outside [0, 2**31 - 1], an
unreadable ground truth, or one with more than 64 calls / arguments (the reward's static shape).
Output is standard JSON: a NaN or infinite ``id`` is written as the string "NaN" / "Infinity".
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

from toolrl_jax.errors import ConfigError, DataError

CHUNK = 1024
MAX_STEP = 2**31 - 1  # steps enter the jitted reward as int32
MAX_SHAPE = 64  # the reward config's largest max_calls / max_args


def _step_arg(text: str) -> int:
    """argparse type of --step: an integer in [0, MAX_STEP]."""
    try:
        step = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= step <= MAX_STEP:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_STEP}], got {step}")
    return step


def _json_safe(value):
    """``value`` with NaN / infinities replaced by the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toolrl_jax.rewards.config import VARIANTS

    parser.add_argument("--input", required=True, help="JSONL file: id, completion, ground_truth, optional step")
    parser.add_argument("--output", help="write scores here (JSONL); default: stdout")
    parser.add_argument("--variant", default="original", choices=list(VARIANTS), help="reward variant")
    parser.add_argument("--matching", choices=["greedy", "optimal"],
                        help="call matching (default: optimal; greedy with --compat toolrl)")
    parser.add_argument("--compat", choices=["toolrl"],
                        help="reproduce the released ToolRL code exactly (greedy, strict equality, its failure rules)")
    parser.add_argument("--equality", choices=["strict", "lenient"], help="value equality (default strict)")
    parser.add_argument("--syntax", choices=["toolrl", "hermes", "python", "auto"],
                        help="call syntax of completions (default toolrl)")
    parser.add_argument("--step", type=_step_arg, default=0,
                        help="training step for scheduled variants (default 0)")
    parser.add_argument("--check", action="store_true",
                        help="also score every line with the plain-Python reference and report differences")


def _config(args):
    from toolrl_jax.rewards.config import ToolRLRewardConfig

    kw = {}
    if args.matching:
        kw["matching"] = args.matching
    if args.equality:
        kw["equality"] = args.equality
    if args.syntax:
        kw["syntax"] = args.syntax
    if args.compat == "toolrl":
        return ToolRLRewardConfig.compat_toolrl(args.variant, **kw)
    return ToolRLRewardConfig(variant=args.variant, **kw)


def _read(path: pathlib.Path, default_step: int):
    """[(line_no, id, completion, ground_truth, step)], [(line_no, reason)]."""
    if not path.is_file():
        raise DataError(f"input file {path} not found; pass --input with a JSONL file of "
                        f"{{id, completion, ground_truth}} lines")
    rows, bad = [], []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"cannot read input file {path}: {e.strerror}") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            bad.append((no, f"not JSON ({str(e).splitlines()[0][:80]})"))
            continue
        if not isinstance(obj, dict):
            bad.append((no, "not a JSON object"))
            continue
        missing = [k for k in ("id", "completion", "ground_truth") if k not in obj]
        if missing:
            bad.append((no, f"missing {', '.join(missing)}"))
            continue
        if not isinstance(obj["completion"], str) or not isinstance(obj["ground_truth"], str):
            bad.append((no, "completion and ground_truth must be strings"))
            continue
        step = obj.get("step", default_step)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            bad.append((no, f"step must be an integer in [0, {MAX_STEP}], got {step!r}"))
            continue
        rows.append((no, obj["id"], obj["completion"], obj["ground_truth"], step))
    return rows, bad


def _bucket(n: int, lo: int) -> int:
    size = lo
    while size < n:
        size *= 2
    return size


def run(args) -> int:
    import numpy as np

    from toolrl_jax.rewards.encode import encode_batch, parse_ground_truth, required_shape
    from toolrl_jax.rewards.toolrl import toolrl_reward

    config = _config(args)
    rows, bad = _read(pathlib.Path(args.input), args.step)

    good = []  # drop lines whose ground truth cannot be read or does not fit the largest shape
    for row in rows:
        try:
            egt = parse_ground_truth(row[3], config)
        except DataError as e:
            bad.append((row[0], f"ground_truth: {e}"))
            continue
        n_args = max((len(c.keys) for c in egt.calls), default=0)
        if len(egt.calls) > MAX_SHAPE or n_args > MAX_SHAPE:
            bad.append((row[0], f"ground_truth has {len(egt.calls)} calls / {n_args} arguments in a "
                                f"call, more than the {MAX_SHAPE} the reward supports"))
            continue
        good.append(row)
    rows = good

    if rows:
        calls, nargs = required_shape([r[2] for r in rows], [r[3] for r in rows], config)
        C, A = min(_bucket(calls, 4), 64), min(_bucket(nargs, 4), 64)
        if calls > 64 or nargs > 64:
            print("toolrl-jax reward: note: predictions with more than 64 calls/arguments score as "
                  "parse failures", file=sys.stderr)
        config = config.replace(max_calls=C, max_args=A)

    results: dict[int, dict] = {}
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start: start + CHUNK]
        size = _bucket(len(chunk), 8)
        padded = chunk + [chunk[0]] * (size - len(chunk))
        try:
            batch = encode_batch([r[2] for r in padded], [r[3] for r in padded], config)
        except ConfigError as e:  # cannot happen after required_shape, but keep the CLI one-line
            raise DataError(str(e)) from None
        steps = np.array([r[4] for r in padded], np.int32)
        out = toolrl_reward(batch, steps, config)
        arrs = {f: np.asarray(getattr(out, f)) for f in ("total", "format", "correctness", "length")}
        for i, r in enumerate(chunk):
            results[r[0]] = {"id": _json_safe(r[1]), **{f: float(arrs[f][i]) for f in arrs}}

    if args.check and rows:
        from toolrl_jax.rewards.reference import reference_reward

        kw = dict(variant=config.variant, matching=config.matching, equality=config.equality,
                  released_quirks=config.released_quirks, response_only=config.response_only,
                  format_range=config.format_range, correctness_range=config.correctness_range,
                  length_words=config.length_words, length_schedule=config.length_schedule,
                  dynamic_code_steps=config.dynamic_code_steps, total_steps=config.total_steps,
                  two_stage_step=config.two_stage_step)
        diffs = 0
        for no, _, comp, gt, step in rows:
            ref = reference_reward(comp, gt, step, **kw)
            got = results[no]
            if max(abs(got[f] - v) for f, v in zip(("total", "format", "correctness", "length"), ref)) > 1e-5:
                diffs += 1
                print(f"line {no}: jitted {got['total']:.6f} != reference {ref[0]:.6f}", file=sys.stderr)
        print(f"toolrl-jax reward: --check: {len(rows) - diffs}/{len(rows)} lines agree with the reference",
              file=sys.stderr)
        if diffs:
            bad.append((0, f"{diffs} lines differ from the reference"))

    for no, reason in sorted(bad):
        if no:
            print(f"{args.input}:{no}: {reason}; skipped", file=sys.stderr)

    text = "".join(json.dumps(results[no], allow_nan=False) + "\n" for no in sorted(results))
    if args.output:
        try:
            pathlib.Path(args.output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise DataError(f"cannot write --output {args.output}: {e.strerror}") from None
    else:
        sys.stdout.write(text)
    print(f"toolrl-jax reward: scored {len(results)} lines, skipped {sum(1 for n, _ in bad if n)}",
          file=sys.stderr)
    return 1 if bad else 0
