"""SFT killed with SIGKILL resumes with identical losses (one process, the real CLI).

``toolrl-jax train`` with ``sft.steps=6`` and ``train.checkpoint_every=1`` on the tiny model
is killed with SIGKILL as soon as its SFT checkpoint of step 2 is on disk, then started again
with the same command. The reference is an uninterrupted run of the same command: every SFT
step's loss in ``metrics.jsonl`` must match it (|diff| <= 1e-6), and so must the evaluation
after SFT (the restored weights went on training to the same end point). The killed run is
slowed by a pause before each SFT step (wall clock only, the arithmetic is untouched) so that
the kill lands mid-SFT; the test checks that it did.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import sigkill_once_exists
from toolrl_jax.train.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
SFT_STEPS = 6
KILL_AFTER = 2  # SIGKILL once checkpoints_sft/KILL_AFTER exists

# the CLI, with an optional pause before each SFT step (SFT_STEP_PAUSE seconds)
DRIVER = """
import os, sys, time
from toolrl_jax.cli import main
from toolrl_jax.train import sft

pause = float(os.environ.get("SFT_STEP_PAUSE", "0"))
if pause:
    step = sft.SFTLearner.step
    def paused_step(self, state, batch):
        time.sleep(pause)
        return step(self, state, batch)
    sft.SFTLearner.step = paused_step
sys.exit(main())
"""


def _args(model_dir, out_dir):
    return ["train", f"model.name={model_dir}", f"train.out_dir={out_dir}", "train.steps=0",
            "train.checkpoint_every=1", f"train.keep_checkpoints={SFT_STEPS}",
            "train.plot=false", "data.num_train=8", "data.num_eval=1",
            "data.prompt_style=compact", "rollout.prompts_per_step=1",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", f"sft.steps={SFT_STEPS}",
            "sft.batch_size=4", "sft.micro_batch_size=2", "sft.learning_rate=1e-2"]


def _start(model_dir, out_dir, cache_dir, log_file, pause=0.0):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", SFT_STEP_PAUSE=str(pause),
               JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                         str(cache_dir)))
    log = open(log_file, "w")  # noqa: SIM115 - closed by _finish
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *_args(model_dir, out_dir)], env=env,
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _finish(proc, log_file, timeout=300):
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        proc.log.close()
    assert rc == 0, pathlib.Path(log_file).read_text()[-3000:]


def _records(run_dir, kind):
    return [r for r in read_metrics(run_dir) if r["kind"] == kind]


def test_sft_killed_with_sigkill_resumes_with_identical_losses(tiny_model_dir, tmp_path):
    cache = tmp_path / "jax_cache"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = _start(tiny_model_dir, whole, cache, tmp_path / "whole.log")
    victim = _start(tiny_model_dir, killed, cache, tmp_path / "killed.log", pause=1.0)
    ckpts = killed / "checkpoints_sft"
    sigkill_once_exists(victim, ckpts / str(KILL_AFTER), tmp_path / "killed.log", timeout=300,
                        what="SFT checkpoint")
    victim.log.close()
    done_at_kill = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert done_at_kill and done_at_kill[-1] < SFT_STEPS, done_at_kill  # killed mid-SFT
    assert len(_records(killed, "sft")) < SFT_STEPS

    resumed = _start(tiny_model_dir, killed, cache, tmp_path / "resumed.log")
    _finish(resumed, tmp_path / "resumed.log")
    _finish(reference, tmp_path / "whole.log")
    log = (tmp_path / "resumed.log").read_text()
    assert "resumed SFT from" in log, log[-3000:]  # continued, not started over

    got, want = _records(killed, "sft"), _records(whole, "sft")
    assert [r["step"] for r in want] == list(range(1, SFT_STEPS + 1))
    assert [r["step"] for r in got] == [r["step"] for r in want]  # each step logged once
    for a, b in zip(got, want):
        assert abs(a["sft_loss"] - b["sft_loss"]) <= 1e-6, (a["step"], a, b)
    assert len({r["sft_loss"] for r in want}) > 1  # the loss moves: a real update
    (after_got,), (after_want,) = _records(killed, "eval_after_sft"), _records(whole,
                                                                               "eval_after_sft")
    assert after_got["reward"] == pytest.approx(after_want["reward"], abs=1e-6)
