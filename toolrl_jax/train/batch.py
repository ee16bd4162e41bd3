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


def pack_bins(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit decreasing: the rows (``lengths[i]`` tokens each, 0 = nothing to train) in
    bins of at most ``capacity`` tokens, longest first; rows of length 0 are left out.
    O(rows x bins) on the host (rows are at most a few hundred)."""
    order = sorted((i for i in range(len(lengths)) if lengths[i] > 0),
                   key=lambda i: (-int(lengths[i]), i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = int(lengths[i])
        k = next((k for k, f in enumerate(free) if f >= n), None)
        if k is None:
            bins.append([i])
            free.append(capacity - n)
        else:
            bins[k].append(i)
            free[k] -= n
    return bins


def packed_row_count(num_bins: int, *, rows: int, unit: int) -> int:
    """Rows of a packed batch: ``num_bins`` rounded up to ``unit`` x (1, 2, 3, 4, 6, 8, 12, ...:
    powers of two and 1.5 x them, so at most ``2 log2(rows / unit) + 1`` shapes ever compile),
    never more than ``rows``."""
    units = max(1, -(-int(num_bins) // int(unit)))
    size = 1
    while size < units:  # a power of two p > 1 is followed by 3p / 2, and 3p / 2 by 2p
        if size == 1:
            size = 2
        elif size & (size - 1) == 0:
            size = size * 3 // 2
        else:
            size = size * 4 // 3
    return min(rows, unit * size)


def row_spans(batch: TrainBatch) -> tuple[np.ndarray, np.ndarray]:
    """``(start, length)`` ``[B]`` of each row's tokens (first to last with ``segment_ids !=
    0``); length 0 for a row with no loss token (it adds nothing to the loss)."""
    valid = np.asarray(batch.segment_ids) != 0
    has = valid.any(1) & (np.asarray(batch.loss_mask) != 0).any(1)
    t = valid.shape[1]
    start = np.where(has, valid.argmax(1), 0)
    end = np.where(has, t - valid[:, ::-1].argmax(1), 0)
    return start, end - start


def pack_rows(batch: TrainBatch, bins: list[list[int]], num_rows: int, *,
              pad_id: int) -> TrainBatch:
    """The sequences of ``batch`` (host arrays, one per row) packed ``bins[r]`` into row ``r``
    of ``num_rows >= len(bins)`` rows of the same length ``T``: segment ``k`` (1, 2, ...) of a
    row is its ``k``-th sequence, positions are kept (they restart per sequence), advantages
    become per token. The decoder attends within a segment only and the loss aggregates per
    segment (``rl.losses``), so the loss and its gradient are those of ``batch`` (rows of
    ``bins`` not listed must have no loss token). Old / reference log-probs are computed on the
    packed batch afterwards (they must still be None here)."""
    if batch.old_logprobs is not None or batch.ref_logprobs is not None:
        raise ValueError("pack_rows: pack before the log-prob stage")
    tokens = np.asarray(batch.tokens)
    segments = np.asarray(batch.segment_ids) != 0
    t = tokens.shape[1]
    start, length = row_spans(batch)
    adv = np.asarray(batch.advantages, np.float32)
    out = {
        "tokens": np.full((num_rows, t), pad_id, tokens.dtype),
        "positions": np.zeros((num_rows, t), np.asarray(batch.positions).dtype),
        "segment_ids": np.zeros((num_rows, t), np.int32),
        "loss_mask": np.zeros((num_rows, t), np.float32),
        "advantages": np.zeros((num_rows, t), np.float32),
    }
    src = {"tokens": tokens, "positions": np.asarray(batch.positions),
           "loss_mask": np.asarray(batch.loss_mask, np.float32)}
    if batch.sample_logprobs is not None:
        src["sample_logprobs"] = np.asarray(batch.sample_logprobs, np.float32)
        out["sample_logprobs"] = np.zeros((num_rows, t), np.float32)
    for r, rows in enumerate(bins):
        if int(length[rows].sum()) > t:
            raise ValueError(f"pack_rows: bin {r} holds {int(length[rows].sum())} tokens, "
                             f"more than T={t}")
        offset = 0
        for k, b in enumerate(rows, start=1):
            s, n = int(start[b]), int(length[b])
            dst = slice(offset, offset + n)
            for key, a in src.items():
                out[key][r, dst] = a[b, s:s + n]
            out["segment_ids"][r, dst] = np.where(segments[b, s:s + n], k, 0)
            out["advantages"][r, dst] = adv[b, s:s + n] if adv.ndim == 2 else adv[b]
            offset += n
    return TrainBatch(**{"sample_logprobs": None, **out})


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

    def response_mask(self) -> np.ndarray:
        """``[B, T]`` the rows' trained tokens: the strategy's loss mask (else the
        trajectory's) times the row's loss weight."""
        b = self.batch
        mask = np.asarray(b.trajectory.loss_mask if b.loss_mask is None else b.loss_mask,
                          np.float32)
        return mask * np.asarray(self.train_rows, np.float32)[:, None]


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
