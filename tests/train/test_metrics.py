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


# ---------------------------------------------------------------- writers (issue 18)

import subprocess
import sys
import textwrap

import pytest

from toolrl_jax.errors import ConfigError
from toolrl_jax.train import metrics as metrics_mod
from toolrl_jax.train.metrics import MetricsConfig, crc32c


def test_crc32c_known_vectors():
    # RFC 3720 B.4 test vectors for CRC-32C.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(bytes([0xFF] * 32)) == 0x62A8AB43


_WRITE_WITHOUT_TORCH = textwrap.dedent("""
    import sys
    for name in ("torch", "tensorflow", "tensorboardX"):   # as if not installed
        sys.modules[name] = None
    from toolrl_jax.train.metrics import MetricsConfig, MetricsLogger
    run = sys.argv[1]
    log = MetricsLogger(run, config=MetricsConfig(writers=("jsonl", "tensorboard")))
    for step in range(1, 6):
        log.log(step, {"reward": step * 0.5, "loss": 1.0 / step, "flag": True})
    log.log(5, {"accuracy": 0.25}, kind="eval")
    log.close()
    # a resume at step 3: steps 4, 5 are logged again with other values
    log = MetricsLogger(run, config=MetricsConfig(writers=("jsonl", "tensorboard")))
    print("removed", log.resume_at(3))
    for step in (4, 5):
        log.log(step, {"reward": -step, "loss": 0.0})
    log.close()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "tensorboardX")
                    and sys.modules[m] is not None)
    print("heavy", loaded)
""")


def test_tensorboard_events_without_torch_load_in_tensorboard_reader(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    out = subprocess.run([sys.executable, "-c", _WRITE_WITHOUT_TORCH, str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert "heavy []" in out.stdout
    assert "removed 3" in out.stdout  # train 4, train 5, eval 5
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert set(tags) == {"train/reward", "train/loss", "eval/accuracy"}
    reward = [(e.step, e.value) for e in acc.Scalars("train/reward")]
    assert reward == [(1, 0.5), (2, 1.0), (3, 1.5), (4, -4.0), (5, -5.0)]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3, 0.0, 0.0])
    # the eval record at step 5 was logged after the checkpoint at 3: purged
    assert [e.step for e in acc.Scalars("eval/accuracy")] == []
    # jsonl agrees: one record per (step, kind), in order
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"], r["reward"]) for r in lines] == [
        (1, "train", 0.5), (2, "train", 1.0), (3, "train", 1.5), (4, "train", -4), (5, "train", -5)]


def test_resume_at_drops_later_steps_and_final_eval(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log(0, {"acc": 0.1}, kind="eval")
    for step in (1, 2, 3):
        log.log(step, {"reward": float(step)})
    log.log(3, {"acc": 0.9}, kind="eval_final")
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "rew')  # torn line from the kill
    log = MetricsLogger(tmp_path, tensorboard=False)
    assert log.resume_at(2) == 3  # step 3 train, eval_final, torn line
    log.log(3, {"reward": 30.0})
    log.close()
    recs = read_metrics(tmp_path)
    assert [(r["step"], r["kind"]) for r in recs] == [(0, "eval"), (1, "train"), (2, "train"),
                                                     (3, "train")]
    assert recs[-1]["reward"] == 30.0


def test_read_metrics_keeps_last_of_duplicate_steps(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "kind": "train", "r": 1}\n{"step": 2, "kind": "train", "r": 2}\n'
        '{"step": 2, "kind": "train", "r": 20}\n{"step": 2, "kind": "eval", "r": 5}\n')
    assert [(r["step"], r["kind"], r["r"]) for r in read_metrics(tmp_path)] == [
        (1, "train", 1), (2, "train", 20), (2, "eval", 5)]


def test_missing_writer_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(metrics_mod, "wandb", None)
    log = MetricsLogger(tmp_path, config=MetricsConfig(writers=("jsonl", "wandb")))
    log.log(1, {"reward": 1.0})
    log.close()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "wandb" in err and "pip install wandb" in err
    assert read_metrics(tmp_path)[0]["reward"] == 1.0
    with pytest.raises(ConfigError, match="pip install wandb"):
        MetricsLogger(tmp_path, config=MetricsConfig(writers=("wandb",), on_missing="error"))


def test_unknown_writer_names_the_key():
    with pytest.raises(ConfigError, match=r"metrics.writers.*'tensorboard'"):
        MetricsConfig(writers=("tensorbord",))


def test_wandb_offline_writes_a_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLogger(tmp_path, config=MetricsConfig(writers=("wandb",), wandb_mode="offline"))
    log.log(1, {"reward": 1.0})
    log.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


def test_nested_metrics_are_json_and_tensorboard_names(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    log = MetricsLogger(tmp_path)
    log.log(1, {"exact_match": 0.5, "reward": {"format": np.float32(1.0), "length": float("nan")},
                "ids": [1.0, float("inf")]}, kind="eval")
    log.close()
    (rec,) = read_metrics(tmp_path)
    assert rec["reward"] == {"format": 1.0, "length": None} and rec["ids"] == [1.0, 1e308]
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"eval/exact_match", "eval/reward/format"}
