"""The speed scripts: device_check.sh is valid bash; bench_hw prints its two limits; the peers
benchmark's interleaving returns the best time of each callable; bench_packing packs."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import time

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_is_valid_bash_and_rejects_unknown_flags():
    subprocess.run(["bash", "-n", str(SCRIPTS / "device_check.sh")], check=True)
    bad = subprocess.run(["bash", str(SCRIPTS / "device_check.sh"), "--bogus"], capture_output=True)
    assert bad.returncode == 2 and b"usage" in bad.stderr


def test_bench_hw_prints_bandwidth_and_matmul(capsys):
    _load("bench_hw").main(["--mib", "8", "--n", "64", "--repeats", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["measure"] for r in lines] == ["memory_read_bandwidth", "matmul_peak"]
    assert lines[0]["bytes"] == 8 * 2**20 and lines[0]["gb_per_s"] > 0
    assert lines[1]["gflop_per_s"] > 0


def test_interleaved_takes_the_best_of_alternating_runs():
    peers = _load("bench_vs_peers")
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.02)

    def fast():
        calls.append("fast")

    best = peers._interleaved({"slow": slow, "fast": fast}, repeats=2, warmups={"fast": lambda: None})
    assert calls == ["slow", "slow", "fast", "slow", "fast"]  # fast's warm-up was the stand-in
    assert best["slow"] >= 0.02 > best["fast"]


def test_bench_packing_packs_into_fewer_rows_with_the_same_loss(capsys):
    _load("bench_packing").main(["--batch", "8", "--seq", "64", "--min-len", "12",
                                 "--max-len", "40", "--prompt-len", "4", "--repeats", "1"])
    padded, packed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (padded["variant"], packed["variant"]) == ("padded", "packed")
    assert packed["rows"] < padded["rows"] == 8 and packed["fill"] > padded["fill"]
    assert packed["real_tokens"] == padded["real_tokens"]
    assert packed["loss_abs_diff"] <= 1e-5 * max(1.0, abs(padded["loss"]))
