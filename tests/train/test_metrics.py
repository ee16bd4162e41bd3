"""Metrics JSONL survives a torn last line; plot writes one PNG per record kind."""

import json

import numpy as np

from toolrl_jax.cli import main
from toolrl_jax.train.metrics import MetricsLogger, read_metrics


def test_jsonl_roundtrip_and_plot(tmp_path, capsys):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(3):
        log.log(step, {"reward": np.float32(step * 0.5), "loss": float("nan")})
    log.log(2, {"score": 1.0}, kind="eval")
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')  # crash mid-write
    recs = read_metrics(tmp_path)
    assert [r["reward"] for r in recs if r["kind"] == "train"] == [0.0, 0.5, 1.0]
    assert recs[0]["loss"] is None
    json.dumps(recs)
    assert main(["plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[-1] for p in out} == {"train.png", "eval.png"}


def test_plot_missing_run_is_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no metrics" in err and "\n" not in err
