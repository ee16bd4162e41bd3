"""Hooks: what runs around the RL steps (metrics, the non-finite guard, evaluation,
checkpoints, plots), each with an ``every`` period.

A hook gets the trainer and the explicit :class:`RunState` at the start of the loop, after every
step (``after_step`` runs when ``step % every == 0``; ``every=0`` disables it) and at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from toolrl_jax.errors import TrainingError
from toolrl_jax.train.checkpoint import Checkpointer
from toolrl_jax.train.metrics import MetricsLogger, plot_run


@dataclasses.dataclass
class RunState:
    """The mutable state of one ``train()`` call, in one typed record.

    Attributes:
      state: the learner's ``TrainState`` (params, optimizer state, step, rng).
      start_step: first RL step of this call (> 0 after a resume).
      steps: last RL step of the run (``train.steps``).
      summary: held-out evaluations so far (``before``, ``after_sft``, ``after``, ...).
      metrics: the metrics logger; checkpointer: Orbax checkpoints.
      reference_params: the frozen KL reference (None without KL).
      last_finite_step: newest step whose loss and gradient norm were finite.
    """

    state: Any
    start_step: int
    steps: int
    summary: dict
    metrics: MetricsLogger
    checkpointer: Checkpointer
    reference_params: Any = None
    last_finite_step: int = 0

    def position(self, step: int) -> dict:
        """What a checkpoint stores besides the state: the data position and the summary."""
        return {"step": int(step), "summary": self.summary}


class NullMetrics:
    """The metrics logger of processes other than 0 (only process 0 writes the run's files)."""

    def log(self, step: int, metrics: dict, *, kind: str = "train") -> dict:
        return dict(metrics, step=step, kind=kind)

    def resume_at(self, step: int, **_: Any) -> int:
        return 0

    def close(self) -> None:
        pass


class Hook:
    """Base hook: override what you need."""

    every: int = 1

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def on_start(self, trainer: Any, run: RunState) -> None:
        pass

    def after_step(self, trainer: Any, run: RunState, step: int, metrics: dict) -> None:
        pass

    def on_end(self, trainer: Any, run: RunState) -> None:
        pass


class FiniteGuard(Hook):
    """Stops the run at the first non-finite loss or gradient norm, before it is checkpointed,
    so that the newest checkpoint stays the last finite one."""

    keys = ("loss", "grad_norm")

    def after_step(self, trainer, run, step, metrics):
        bad = [k for k in self.keys if k in metrics and not math.isfinite(metrics[k])]
        if not bad:
            run.last_finite_step = step
            return
        run.metrics.log(step, metrics, kind="diverged")
        kept = run.checkpointer.latest_step()
        raise TrainingError(
            f"step {step}: {' and '.join(bad)} is not finite ({metrics.get('loss')}); stopped "
            f"without saving it. Newest checkpoint: "
            f"{'step ' + str(kept) if kept is not None else 'none'} (kept). Lower "
            "optim.learning_rate or set optim.grad_clip_norm, then rerun to resume.")


class LogMetrics(Hook):
    """Appends every step's metrics to ``metrics.jsonl`` (and the configured writers)."""

    def after_step(self, trainer, run, step, metrics):
        run.metrics.log(step, metrics)


class Evaluate(Hook):
    """Held-out evaluation every ``every`` steps and at the end (``summary['after']``)."""

    def __init__(self, every: int, limit: int):
        self.every, self.limit = every, limit

    def after_step(self, trainer, run, step, metrics):
        if step < run.steps:
            run.metrics.log(step, trainer.evaluate(step, self.limit), kind="eval")

    def on_end(self, trainer, run):
        after = trainer.evaluate(run.steps, self.limit)
        run.summary["after"] = after
        run.metrics.log(run.steps, after, kind="eval_final")


class Checkpoint(Hook):
    """Orbax checkpoint every ``every`` steps, on SIGTERM, and at the end."""

    def __init__(self, every: int):
        self.every = every

    def due(self, step: int) -> bool:
        return True  # the checkpointer decides (schedule or pre-emption)

    def after_step(self, trainer, run, step, metrics):
        saved = run.checkpointer.step_boundary(step, run.state, run.position(step),
                                               require_finite=True)
        if not saved and step % run.checkpointer.save_every == 0:
            raise TrainingError(
                f"step {step}: the parameters or optimizer state hold NaN/inf; not saved. Newest "
                f"checkpoint: step {run.checkpointer.latest_step()} (kept). Lower "
                "optim.learning_rate or set optim.grad_clip_norm, then rerun to resume.")

    def on_end(self, trainer, run):
        if run.checkpointer.latest_step() != run.steps:
            run.checkpointer.save(run.steps, run.state, run.position(run.steps),
                                  require_finite=True)
        run.checkpointer.wait()


class Plot(Hook):
    """PNG curves of the run at the end (needs matplotlib)."""

    every = 0

    def on_end(self, trainer, run):
        if not getattr(trainer, "primary", True):
            return
        try:
            run.summary["plots"] = [str(p) for p in plot_run(trainer.run_dir)]
        except ImportError:
            trainer.log("matplotlib not installed: skipping plots (pip install matplotlib)")


def default_hooks(cfg) -> list[Hook]:
    """The guard, metrics, evaluation, checkpoints and plots of a :class:`TrainConfig`, in
    the order they run."""
    hooks: list[Hook] = [FiniteGuard(), LogMetrics(), Evaluate(cfg.train.eval_every,
                                                               cfg.train.eval_limit),
                         Checkpoint(cfg.train.checkpoint_every)]
    if cfg.train.plot:
        hooks.append(Plot())
    return hooks


def round_floats(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def dumps(d: dict) -> str:
    return json.dumps(round_floats(d))
