"""Kill a tiny training run (SIGKILL between checkpoints, SIGTERM), resume, compare metrics."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("_train_script.py")
REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(tmp: pathlib.Path, name: str, ckpt: str, *extra: str) -> tuple[int, str, list[dict]]:
    metrics = tmp / f"{name}.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--ckpt", str(tmp / ckpt), "--metrics", str(metrics),
         "--cache", str(tmp / "jax_cache"), "--steps", "6", "--save-every", "2", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    rows = [json.loads(line) for line in lines]
    return proc.returncode, proc.stdout + proc.stderr, rows


@pytest.mark.slow
def test_kill_and_resume_reproduce_uninterrupted_run(tmp_path):
    rc, log, ref = _run(tmp_path, "ref", "ref")
    assert rc == 0, log
    assert [int(m["step"]) for m in ref] == [1, 2, 3, 4, 5, 6]
    ref_by_step = {int(m["step"]): m for m in ref}
    # the run really learns something that depends on the state (params move)
    assert len({m["param_sum"] for m in ref}) == 6

    def check(rows):
        for m in rows:
            r = ref_by_step[int(m["step"])]
            for key in ("loss", "pg_loss", "grad_norm", "entropy", "param_sum", "learning_rate"):
                assert m[key] == pytest.approx(r[key], rel=1e-6, abs=1e-9), (m["step"], key)

    # SIGTERM after step 3: saved at the step boundary (step 3), exit code 143
    rc, log, termed = _run(tmp_path, "term", "run", "--sigterm-after", "3")
    assert rc == 143, log
    assert [int(m["step"]) for m in termed] == [1, 2, 3]
    assert (tmp_path / "run" / "3").is_dir()
    # resume at 3; SIGKILL after step 5, between the checkpoints of steps 4 and 6
    rc, log, killed = _run(tmp_path, "kill", "run", "--kill-after", "5")
    assert rc == -9, log
    assert "resumed at step 3" in log
    assert [int(m["step"]) for m in killed] == [4, 5]
    # resume from the step-4 checkpoint: step 5 is redone, then 6
    rc, log, resumed = _run(tmp_path, "resume", "run")
    assert rc == 0, log
    assert "resumed at step 4" in log
    assert [int(m["step"]) for m in resumed] == [5, 6]
    check(termed + killed + resumed)
    # keep=2: only the last two checkpoints remain
    assert sorted(int(p.name) for p in (tmp_path / "run").iterdir() if p.name.isdigit()) == [4, 6]
