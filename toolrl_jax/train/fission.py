"""Fission-GRPO error-recovery rollouts (``rollout.strategy: fission``, arXiv 2601.15625).

One step:

1. a normal group rollout (``groups``): ``P = rollout.prompts_per_step`` prompts x
   ``G = rollout.samples_per_prompt`` samples;
2. every row whose tool call failed (a call record with ``ok`` false in ``Trajectory.tool_calls``:
   an execution error, a rejected argument, a parse error) is split at its **first** failed
   call: the row's ids up to the start of the next turn (the failed call's turn and the
   environment's observation with its error text, the diagnostic message) become a recovery
   prompt, pushed onto a bounded LIFO buffer (``fission.buffer_size``; the oldest are dropped);
3. the newest ``K`` prompts are popped and ``G' = fission.recovery_samples`` recovery rollouts
   are sampled on-policy from each (the turns left: ``rollout.max_turns`` minus the prefix's);
   each recovery prompt is its own group, so the group estimator (``algo.advantage``, GRPO) gives
   ``A_i = (r_i - mean_{G'} r) / (std_{G'} r + eps)`` over its ``G'`` samples only. The prefix is
   the prompt of those rows, so the loss covers only the recovery tokens.

Static shapes: the batch always holds ``P*G + K_max*G'`` rows with
``K_max = floor(f * P*G / ((1 - f) * G'))`` (``f = fission.max_fraction``, so recovery rows are at
most a share ``f`` of the batch); recovery slots without a prompt are filled with copies of row 0
whose loss mask is 0 (a group of ``G'`` equal rows: advantage 0). ``P + K_max`` groups always.

Not implemented: the optional auxiliary error-simulator model of the paper (``fission.
simulator_model`` must stay empty; the diagnostic is the environment's own error text). The
buffer lives in memory and is not checkpointed (a resumed run starts with it empty).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections import deque

import numpy as np

from toolrl_jax.errors import ConfigError
from toolrl_jax.rollout.engine import RolloutRequest
from toolrl_jax.rollout.trajectory import Trajectory, concat_trajectories, take_rows
from toolrl_jax.train.strategies import (
    ROLLOUT_STRATEGIES,
    PromptDraw,
    RolloutBatch,
    RolloutContext,
    groups,
)

RECOVERY_SEED_OFFSET = 0x0F15


@dataclasses.dataclass(frozen=True, kw_only=True)
class FissionConfig:
    """The YAML ``fission:`` section (used by ``rollout.strategy: fission``).

    Attributes:
      recovery_samples: ``G'`` recovery rollouts per recovery prompt (their own GRPO group).
      buffer_size: most pending recovery prompts kept across steps (LIFO; oldest dropped).
      max_fraction: most share of recovery rows in a batch, in [0, 1).
      simulator_model: an auxiliary error-simulator model (not implemented: leave empty).
    """

    recovery_samples: int = 4
    buffer_size: int = 64
    max_fraction: float = 0.25
    simulator_model: str = ""

    def __post_init__(self) -> None:
        if self.recovery_samples < 2:
            raise ConfigError(f"fission.recovery_samples must be >= 2 (a group), got "
                              f"{self.recovery_samples}")
        if self.buffer_size < 1:
            raise ConfigError(f"fission.buffer_size must be >= 1, got {self.buffer_size}")
        if not 0.0 <= self.max_fraction < 1.0:
            raise ConfigError(f"fission.max_fraction must be in [0, 1), got {self.max_fraction}")
        if self.simulator_model:
            raise ConfigError("fission.simulator_model is not implemented; leave it empty (the "
                              "diagnostic is the environment's error text)")

    def recovery_groups(self, normal_rows: int) -> int:
        """``K_max = floor(f * rows / ((1 - f) * G'))``: recovery groups per batch."""
        f = self.max_fraction
        return int(math.floor(f * normal_rows / ((1.0 - f) * self.recovery_samples) + 1e-9))


@dataclasses.dataclass(frozen=True)
class RecoveryPrompt:
    """A failed trajectory's prefix (through the failed call's observation) and its task."""

    ids: tuple[int, ...]
    task_index: int
    turns_used: int  # generated turns in the prefix


class RecoveryBuffer:
    """Bounded LIFO of pending recovery prompts (newest popped first, oldest dropped)."""

    def __init__(self, size: int):
        self.items: deque[RecoveryPrompt] = deque(maxlen=size)

    def push(self, prompts: list[RecoveryPrompt]) -> None:
        self.items.extend(prompts)

    def pop(self, k: int) -> list[RecoveryPrompt]:
        return [self.items.pop() for _ in range(min(k, len(self.items)))]

    def __len__(self) -> int:
        return len(self.items)


_BUFFERS: "weakref.WeakKeyDictionary[object, RecoveryBuffer]" = weakref.WeakKeyDictionary()


def buffer_of(ctx: object, size: int) -> RecoveryBuffer:
    """The recovery buffer of one trainer (kept across its steps)."""
    if ctx not in _BUFFERS:
        _BUFFERS[ctx] = RecoveryBuffer(size)
    return _BUFFERS[ctx]


def first_failed_turn(calls: list[dict]) -> int | None:
    """The turn of the first call record with ``ok`` false, or None."""
    failed = [c["turn"] for c in calls if not c.get("ok", True)]
    return min(failed) if failed else None


def recovery_prompts(traj: Trajectory, task_indices: list[int]) -> list[RecoveryPrompt]:
    """Split every row with a failed call at its first failed call: ids up to the next turn's
    start (the failed turn and its error observation). Rows whose observation was not appended
    (no next turn) give none."""
    out = []
    for i in range(len(traj)):
        t = first_failed_turn(traj.tool_calls[i])
        if t is None or t + 1 >= int(traj.num_turns[i]):
            continue
        end = int(traj.turn_starts[i, t + 1])
        out.append(RecoveryPrompt(tuple(int(x) for x in traj.tokens[i, :end]), task_indices[i],
                                  turns_used=t + 1))
    return out


def recovery_success(traj: Trajectory) -> np.ndarray:
    """``[N]`` bool: the recovery made no failed call and ended on its own (eos / stop)."""
    ended = np.isin(traj.stop_reasons, ("eos", "stop_sequence"))
    clean = np.array([first_failed_turn(c) is None for c in traj.tool_calls])
    return ended & clean


@ROLLOUT_STRATEGIES.register("fission")
def fission_strategy(ctx: RolloutContext, draw: PromptDraw) -> RolloutBatch:
    """A normal group rollout plus recovery groups from failed calls (module docstring)."""
    cfg: FissionConfig = ctx.cfg.fission
    if ctx.cfg.algo.dynamic_sampling:
        raise ConfigError("rollout.strategy=fission does not support algo.dynamic_sampling; "
                          "set algo.dynamic_sampling=false")
    _check_rows(ctx, cfg)
    normal = groups(ctx, draw)
    rows_idx = [int(i) for i in draw.task_indices for _ in range(ctx.samples_per_prompt)]
    made = recovery_prompts(normal.trajectory, rows_idx)
    buffer = buffer_of(ctx, cfg.buffer_size)
    buffer.push(made)
    k_max = cfg.recovery_groups(len(normal.tasks))
    max_turns = ctx.cfg.rollout.max_turns
    chosen = [p for p in buffer.pop(k_max) if max_turns - p.turns_used >= 1]
    parts, tasks, gids, weights = [normal.trajectory], list(normal.tasks), [normal.group_ids], []
    weights.append(np.ones(len(normal.tasks), np.float32))
    g_rec, success = cfg.recovery_samples, np.zeros(0, bool)
    if chosen:
        rec = _roll_out_recoveries(ctx, chosen, g_rec, draw.seed + RECOVERY_SEED_OFFSET, max_turns)
        parts.append(rec)
        tasks += [ctx.train_tasks[p.task_index] for p in chosen for _ in range(g_rec)]
        gids.append(normal.num_groups + np.repeat(np.arange(len(chosen), dtype=np.int32), g_rec))
        weights.append(np.ones(len(rec), np.float32))
        success = recovery_success(rec)
    fill = (k_max - len(chosen)) * g_rec
    if fill:
        parts.append(take_rows(normal.trajectory, [0] * fill))
        tasks += [normal.tasks[0]] * fill
        gids.append(normal.num_groups + len(chosen)
                    + np.repeat(np.arange(k_max - len(chosen), dtype=np.int32), g_rec))
        weights.append(np.zeros(fill, np.float32))
    traj = concat_trajectories(parts, pad_id=getattr(ctx, "pad_id", 0))
    group_ids = np.concatenate(gids).astype(np.int32)
    traj = dataclasses.replace(traj, group_ids=group_ids, stats=dict(normal.trajectory.stats))
    loss_mask = traj.loss_mask.astype(np.float32) * np.concatenate(weights)[:, None]
    failed = np.array([first_failed_turn(c) is not None for c in normal.trajectory.tool_calls])
    metrics = {
        "fission/failed_call_rate": float(failed.mean()),
        "fission/recovery_prompts_made": float(len(made)),
        "fission/recovery_groups": float(len(chosen)),
        "fission/recovery_rows": float(len(chosen) * g_rec),
        "fission/buffer": float(len(buffer)),
        "fission/recovery_success_rate": float(success.mean()) if success.size else 0.0,
    }
    return RolloutBatch(trajectory=traj, tasks=tasks, group_ids=group_ids,
                        num_groups=normal.num_groups + k_max, loss_mask=loss_mask,
                        metrics=metrics)


def _check_rows(ctx: RolloutContext, cfg: FissionConfig) -> None:
    """The fixed batch ``P*G + K_max*G'`` must split into the PPO mini-/micro-batches."""
    a, r = ctx.cfg.algo, ctx.cfg.rollout
    normal = r.prompts_per_step * r.samples_per_prompt
    rows = normal + cfg.recovery_groups(normal) * cfg.recovery_samples
    mini = rows // a.ppo_minibatches
    if rows % a.ppo_minibatches or (a.micro_batch_size and mini % a.micro_batch_size):
        raise ConfigError(
            f"fission: the batch has {rows} rows (P*G + K_max*G'); algo.ppo_minibatches="
            f"{a.ppo_minibatches} / algo.micro_batch_size={a.micro_batch_size} must divide it: "
            "change fission.max_fraction or fission.recovery_samples")


def _roll_out_recoveries(ctx: RolloutContext, chosen: list[RecoveryPrompt], g_rec: int,
                         seed: int, max_turns: int) -> Trajectory:
    """``g_rec`` on-policy rollouts of each recovery prompt (adjacent: one shared prefill)."""
    requests = [RolloutRequest(prompt_ids=list(p.ids), group_id=j,
                               task=ctx.train_tasks[p.task_index],
                               max_turns=max_turns - p.turns_used)
                for j, p in enumerate(chosen) for _ in range(g_rec)]
    return ctx.engine("train").run(requests, seed=seed)
