"""Benchmark the jitted ToolRL reward: prints one JSON line with samples/s.

    python scripts/bench_reward.py [--samples 4096] [--repeats 5] [--data ../shared/data/toolrl]

Completions are the ToolRL SFT outputs and perturbations of them (calls dropped, reordered,
values changed) scored against their ground truths; falls back to synthetic calls without data.
Reports host encoding throughput and the device scoring throughput (after compilation) for greedy
and optimal matching (max_calls = max_args = 8).

    python scripts/bench_reward.py --end-to-end [--workers N]

instead times ``toolrl_jax.rewards.toolrl.score_texts`` (parse + encode + jitted score, what
``toolrl-jax reward`` and the trainer call) against the released pure-Python reward
(:func:`toolrl_jax.rewards.reference.reference_reward`, the released code's rules) on the same
samples with the released settings (``ToolRLRewardConfig.compat_toolrl()``), interleaved, best of
``--repeats``; one JSON line with both rates, the ratio and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _pairs(n: int, data: pathlib.Path) -> list[tuple[str, str]]:
    rng = random.Random(0)
    gts = []
    if (data / "rlla_sft.json").is_file():
        gts = [r["output"] for r in json.loads((data / "rlla_sft.json").read_text()) if "<tool_call>" in r["output"]]
    if not gts:
        gts = ["<think> t </think>\n<tool_call>\n" + "\n".join(
            json.dumps({"name": f"f{j}", "parameters": {f"k{a}": a for a in range(3)}}) for j in range(3)) + "\n</tool_call>"]
    out = []
    for i in range(n):
        gt = gts[i % len(gts)]
        head, _, rest = gt.rpartition("<tool_call>\n")
        body, _, tail = rest.partition("\n</tool_call>")
        lines = body.split("\n")
        r = rng.random()
        if r < 0.3 and len(lines) > 1:
            rng.shuffle(lines)
        elif r < 0.5:
            lines = lines[:-1] or lines
        elif r < 0.7:
            lines = [line.replace('"', "'", 2) if rng.random() < 0.3 else line for line in lines]
        out.append((head + "<tool_call>\n" + "\n".join(lines) + "\n</tool_call>" + tail, gt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "toolrl"))
    ap.add_argument("--end-to-end", action="store_true", help="score_texts vs the released code")
    ap.add_argument("--workers", type=int, default=None, help="score_texts process pool size")
    ap.add_argument("--distinct", action="store_true",
                    help="make every completion text unique (no repeated texts to encode once)")
    args = ap.parse_args()
    if args.end_to_end:
        return end_to_end(args)

    import jax
    import numpy as np

    from toolrl_jax.rewards.config import ToolRLRewardConfig
    from toolrl_jax.rewards.encode import encode_batch
    from toolrl_jax.rewards.toolrl import toolrl_reward

    pairs = _pairs(args.samples, pathlib.Path(args.data))
    comps, gts = [c for c, _ in pairs], [g for _, g in pairs]
    result = {"bench": "toolrl_reward", "samples": args.samples, "device": str(jax.devices()[0].platform)}
    t0 = time.perf_counter()
    batch = encode_batch(comps, gts, ToolRLRewardConfig())
    result["encode_samples_per_s"] = round(args.samples / (time.perf_counter() - t0), 1)
    batch = jax.device_put(batch)
    for matching in ("greedy", "optimal"):
        cfg = ToolRLRewardConfig(matching=matching)
        t0 = time.perf_counter()
        jax.block_until_ready(toolrl_reward(batch, np.int32(0), cfg))
        compile_s = time.perf_counter() - t0
        times = []
        for step in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(toolrl_reward(batch, np.int32(step), cfg))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        result[f"{matching}_compile_s"] = round(compile_s, 3)
        result[f"{matching}_score_s"] = round(med, 4)
        result[f"{matching}_samples_per_s"] = round(args.samples / med, 1)
    result["samples_per_s"] = min(result["greedy_samples_per_s"], result["optimal_samples_per_s"])
    print(json.dumps(result))


def end_to_end(args) -> None:
    import numpy as np

    from toolrl_jax.rewards.config import ToolRLRewardConfig
    from toolrl_jax.rewards.reference import reference_reward
    from toolrl_jax.rewards.toolrl import score_texts

    pairs = _pairs(args.samples, pathlib.Path(args.data))
    if args.distinct:  # a unique word in the think text: same calls and format, distinct texts
        pairs = [(c.replace("<think>", f"<think> {i}", 1), g) for i, (c, g) in enumerate(pairs)]
    comps, gts = [c for c, _ in pairs], [g for _, g in pairs]
    cfg = ToolRLRewardConfig.compat_toolrl()
    kwargs = {} if args.workers is None else {"workers": args.workers}

    def ours():
        return score_texts(comps, gts, 0, cfg, **kwargs)["total"]

    def released():
        return np.array([reference_reward(c, g)[0] for c, g in pairs])

    np.testing.assert_allclose(ours(), released(), atol=1e-5)  # also the warm-up (compile)
    best = {"ours": float("inf"), "released": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("released", released)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(json.dumps({
        "bench": "toolrl_reward_end_to_end", "samples": args.samples, "workers": args.workers,
        "distinct_texts": len(set(comps)),
        "ours_samples_per_s": round(args.samples / best["ours"], 1),
        "released_samples_per_s": round(args.samples / best["released"], 1),
        "ratio": round(best["released"] / best["ours"], 3), "load1": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
