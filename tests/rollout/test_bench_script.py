"""scripts/bench_rollout.py runs on CPU with the tiny shape and prints one JSON line per result."""

from __future__ import annotations

import importlib.util
import json
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_rollout.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_rollout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_decode_and_multi_turn_tiny(capsys):
    bench = _load()
    bench.main(
        [
            "--model-shape",
            "tiny",
            "--batch",
            "2",
            "--prompt-len",
            "8",
            "--new-tokens",
            "8",
            "--repeats",
            "1",
        ]
    )
    decode = json.loads(capsys.readouterr().out.strip())
    assert decode["bench"] == "decode" and decode["decode_steps"] == 7  # first token from prefill
    assert decode["decode_tokens_per_s"] > 0 and decode["bytes_per_step"] > 0
    bench.main(
        [
            "--model-shape",
            "tiny",
            "--multi-turn",
            "--batch",
            "2",
            "--num-requests",
            "4",
            "--prompt-len",
            "8",
            "--turn-len",
            "8",
            "--traj-len",
            "16",
            "--max-turns",
            "2",
            "--chunk-steps",
            "4",
        ]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["refill"] for x in lines] == [True, False]
    for x in lines:
        assert x["bench"] == "multi_turn" and 0 <= x["slot_utilisation"] <= 1
        assert x["requests"] == 4 and x["generated_tokens"] > 0
    assert lines[0]["generated_tokens"] == lines[1]["generated_tokens"]  # same trajectories
