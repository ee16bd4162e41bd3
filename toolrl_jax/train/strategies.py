"""Rollout strategies by name (``rollout.strategy``): how a step's prompts become trajectories.

A strategy is ``f(ctx: RolloutContext, prompts: PromptDraw) -> RolloutBatch``. ``groups`` (the
GRPO default) rolls out ``rollout.samples_per_prompt`` trajectories of each drawn prompt, all in
one group. Strategies that share prefixes (trees) or add recovery prompts (fission) are entries
here too. Add one::

    @ROLLOUT_STRATEGIES.register("my_strategy")
    def my_strategy(ctx: RolloutContext, draw: PromptDraw) -> RolloutBatch: ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from toolrl_jax.data.task import ToolTask
from toolrl_jax.registry import Registry
from toolrl_jax.rollout.trajectory import Trajectory, take_rows


@dataclasses.dataclass(frozen=True)
class PromptDraw:
    """The prompts of one rollout round: task indices and the round's PRNG seed."""

    task_indices: np.ndarray  # [num_prompts] int64 into the training tasks
    seed: int


@dataclasses.dataclass(frozen=True)
class RolloutBatch:
    """Trajectories of one round with their tasks.

    Attributes:
      trajectory: the rows (numpy).
      tasks: the task of each row.
      group_ids: ``[B]`` int32 group of each row, ``0 .. num_groups-1``.
      num_groups: groups in this batch.
      token_advantages: optional ``f(rewards [B]) -> [B, T]`` per-token advantages replacing the
        group estimator (tree rollouts: step advantages need the rewards, known after scoring).
      loss_mask: optional ``[B, T]`` loss mask replacing the trajectory's (tree rollouts: a
        shared prefix token is owned by one row; fission: filler rows are all 0).
      metrics: the strategy's own metrics for the step (``tree/*``, ``fission/*``).
    """

    trajectory: Trajectory
    tasks: list[ToolTask]
    group_ids: np.ndarray
    num_groups: int
    token_advantages: Callable[[np.ndarray], np.ndarray] | None = None
    loss_mask: np.ndarray | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


class RolloutContext(Protocol):
    """What a strategy may use (the trainer implements it)."""

    samples_per_prompt: int
    train_tasks: Sequence[ToolTask]
    train_prompts: Sequence[Sequence[int]]
    cfg: Any  # the resolved TrainConfig (strategy sections: ``tree``, ``fission``)

    def engine(self, kind: str) -> Any: ...  # the RolloutEngine ('train')

    def rollout(self, prompts: Sequence[Sequence[int]], group_ids: Sequence[int],
                tasks: Sequence[ToolTask], *, seed: int) -> Trajectory: ...


Strategy = Callable[[RolloutContext, PromptDraw], RolloutBatch]
ROLLOUT_STRATEGIES: Registry[Strategy] = Registry("rollout strategy", config_key="rollout.strategy")


def draw_prompts(num_tasks: int, prompts_per_step: int, step: int, seed: int,
                 round_index: int = 0) -> np.ndarray:
    """Task indices of ``step`` (0-based) and sampling round: a pure function of its arguments.

    Round 0 walks epoch-wise permutations (each task once per epoch), so the data position after
    step ``s`` is just ``s`` and resuming needs no iterator state. Extra rounds of dynamic
    sampling draw from their own stream ``(seed, step, round)``.
    """
    if round_index > 0:
        rng = np.random.default_rng([seed, step, round_index, 0x5EED])
        return rng.choice(num_tasks, size=prompts_per_step, replace=num_tasks < prompts_per_step)
    start = step * prompts_per_step
    out: list[int] = []
    while len(out) < prompts_per_step:
        epoch, offset = divmod(start + len(out), num_tasks)
        perm = np.random.default_rng([seed, epoch]).permutation(num_tasks)
        take = min(prompts_per_step - len(out), num_tasks - offset)
        out.extend(perm[offset: offset + take].tolist())
    return np.asarray(out, np.int64)


@ROLLOUT_STRATEGIES.register("groups")
def groups(ctx: RolloutContext, draw: PromptDraw) -> RolloutBatch:
    """``samples_per_prompt`` independent trajectories per prompt; prompt ``j`` is group ``j``."""
    k = ctx.samples_per_prompt
    rows = [int(i) for i in draw.task_indices for _ in range(k)]
    group_ids = np.repeat(np.arange(len(draw.task_indices), dtype=np.int32), k)
    tasks = [ctx.train_tasks[i] for i in rows]
    traj = ctx.rollout([ctx.train_prompts[i] for i in rows], group_ids, tasks, seed=draw.seed)
    return RolloutBatch(trajectory=traj, tasks=tasks, group_ids=group_ids,
                        num_groups=len(draw.task_indices))


def keep_groups(batch: RolloutBatch, keep: Sequence[int]) -> tuple[Trajectory, list, np.ndarray]:
    """Rows of the groups ``keep`` (in that order), renumbered ``0 .. len(keep)-1``."""
    rows = [i for g in keep for i in np.flatnonzero(batch.group_ids == g)]
    new_ids = {int(g): j for j, g in enumerate(keep)}
    return (take_rows(batch.trajectory, rows), [batch.tasks[i] for i in rows],
            np.array([new_ids[int(batch.group_ids[i])] for i in rows], np.int32))
