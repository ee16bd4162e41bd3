"""The typed batch of one RL update and the host-side group selection that builds it."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import numpy as np

from toolrl_jax.rollout.trajectory import Trajectory, concat_trajectories
from toolrl_jax.train.rewards import Scores
from toolrl_jax.train.strategies import RolloutBatch, keep_groups


@flax.struct.dataclass
class TrainBatch:
    """What :meth:`toolrl_jax.rl.train_step.Learner.ppo_update` consumes; every field ``[B, T]``
    except ``advantages`` ``[B]`` (or ``[B, T]`` per token, tree rollouts). ``old_logprobs`` / ``ref_logprobs`` are added by the
    log-prob stage (None until then)."""

    tokens: Any
    positions: Any
    segment_ids: Any
    loss_mask: Any
    sample_logprobs: Any
    advantages: Any
    old_logprobs: Any = None
    ref_logprobs: Any = None

    @classmethod
    def from_trajectory(cls, traj: Trajectory, advantages: np.ndarray, *, length: int,
                        pad_id: int, row_weight: np.ndarray | None = None,
                        loss_mask: np.ndarray | None = None) -> "TrainBatch":
        """Right-pads ``traj`` to ``length`` tokens (one compiled shape); ``row_weight`` [B]
        scales the loss mask (0 drops a row from the loss). ``advantages`` is ``[B]`` or
        per token ``[B, T]``; ``loss_mask`` ``[B, T]`` (a strategy's, e.g. a tree's token
        ownership) replaces the trajectory's (both are right-padded with 0)."""
        arrays = traj.pad_to(length, pad_id=pad_id).to_batch()
        mask = np.asarray(arrays["loss_mask"] if loss_mask is None else _pad(loss_mask, length),
                          np.float32)
        advantages = np.asarray(advantages, np.float32)
        if advantages.ndim == 2:
            advantages = _pad(advantages, length)
        if row_weight is not None:
            mask = mask * np.asarray(row_weight, np.float32)[:, None]
        return cls(tokens=arrays["tokens"], positions=arrays["positions"],
                   segment_ids=arrays["segment_ids"], loss_mask=mask,
                   sample_logprobs=arrays["sample_logprobs"],
                   advantages=advantages)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


def _pad(a: np.ndarray, length: int) -> np.ndarray:
    """``[B, T]`` right-padded with 0 to ``[B, length]``."""
    a = np.asarray(a)
    return np.pad(a, ((0, 0), (0, length - a.shape[1])))


@dataclasses.dataclass(frozen=True)
class Collected:
    """One step's rollouts, scored.

    Attributes:
      batch: exactly ``rollout.prompts_per_step`` groups.
      scores: their rewards.
      informative: ``[B]`` bool, rows of groups whose rewards are not all equal.
      train_rows: ``[B]`` float32 loss weight of each row (0 for constant groups kept only to
        fill the batch under dynamic sampling).
      rounds: rollout rounds used; shortfall: constant groups used as filler.
    """

    batch: RolloutBatch
    scores: Scores
    informative: np.ndarray
    train_rows: np.ndarray
    rounds: int = 1
    shortfall: int = 0


def informative_groups(total: np.ndarray, group_ids: np.ndarray, num_groups: int) -> np.ndarray:
    """``[num_groups]`` bool: the group's rewards are not all equal (DAPO's filter)."""
    out = np.zeros(num_groups, bool)
    for g in range(num_groups):
        r = total[group_ids == g]
        out[g] = r.size > 0 and bool(np.ptp(r) > 0)
    return out


def _concat(dicts: list[dict[str, np.ndarray]], sizes: list[int]) -> dict[str, np.ndarray]:
    """Row-wise concatenation of per-group dicts; a key a group lacks is NaN there."""
    keys = sorted(set().union(*dicts)) if dicts else []
    return {k: np.concatenate([d.get(k, np.full(n, np.nan, np.float32)) for d, n in zip(dicts, sizes)])
            for k in keys}


def select_groups(rounds: list[tuple[RolloutBatch, Scores]], need: int, *,
                  pad_id: int) -> Collected:
    """DAPO dynamic sampling: the first ``need`` informative groups over the rounds, in order;
    constant groups fill what is missing (loss weight 0)."""
    picks: list[tuple[int, int]] = []  # (round, group), informative first
    filler: list[tuple[int, int]] = []
    for r, (batch, scores) in enumerate(rounds):
        good = informative_groups(scores.total, batch.group_ids, batch.num_groups)
        picks += [(r, g) for g in range(batch.num_groups) if good[g]]
        filler += [(r, g) for g in range(batch.num_groups) if not good[g]]
    shortfall = max(0, need - len(picks))
    chosen = picks[:need] + filler[:shortfall]
    parts, tasks, gids, totals, comps, parts_s, keep = [], [], [], [], [], [], []
    for j, (r, g) in enumerate(chosen):
        batch, scores = rounds[r]
        traj, t, _ = keep_groups(batch, [g])
        rows = np.flatnonzero(batch.group_ids == g)
        parts.append(traj)
        tasks += t
        gids.append(np.full(len(rows), j, np.int32))
        totals.append(scores.total[rows])
        comps.append({k: v[rows] for k, v in scores.components.items()})
        parts_s.append({k: v[rows] for k, v in scores.parts.items()})
        keep.append(np.full(len(rows), j < len(picks[:need]), bool))
    sizes = [len(g) for g in gids]
    scores = Scores(total=np.concatenate(totals), components=_concat(comps, sizes),
                    parts=_concat(parts_s, sizes))
    traj = concat_trajectories(parts, pad_id=pad_id)
    traj = dataclasses.replace(traj, group_ids=np.concatenate(gids))
    batch = RolloutBatch(trajectory=traj, tasks=tasks, group_ids=np.concatenate(gids),
                         num_groups=len(chosen))
    informative = np.concatenate(keep)
    return Collected(batch=batch, scores=scores, informative=informative,
                     train_rows=informative.astype(np.float32), rounds=len(rounds),
                     shortfall=shortfall)
