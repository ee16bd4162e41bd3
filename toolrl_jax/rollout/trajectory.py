"""`Trajectory`: a batch of finished rollouts as numpy arrays (the engine's output).

Row ``i`` is one trajectory: the prompt, then alternating generated turns (loss mask 1) and
observations appended by the environment (tool results, turn headers; loss mask 0). Per-token
arrays are aligned with ``tokens``: entry ``[i, t]`` is about token ``t`` (the convention of
``chat.Conversation`` and ``rl.train_step``), so ``sample_logprobs[i, t]`` is the sampler's
``log q(tokens[i, t] | tokens[i, :t])`` where ``loss_mask[i, t] == 1`` and 0 elsewhere.

==================  ==========  ==============================================================
field               shape       meaning
==================  ==========  ==============================================================
tokens              [N, T]      int32 ids, right-padded with ``pad_id``
loss_mask           [N, T]      int32, 1 on tokens the policy generated
sample_logprobs     [N, T]      float32 sampler log-probs (processed distribution, see sampling)
prompt_lengths      [N]         int32 tokens of the initial prompt
lengths             [N]         int32 total valid tokens
group_ids           [N]         int32 GRPO group (samples of one prompt share it)
uids                [N]         int32 request index (also the PRNG stream id)
num_turns           [N]         int32 generated turns
turn_starts         [N, K]      int32 index of each turn's first generated token, -1 = none
turn_ends           [N, K]      int32 exclusive end of each turn's generated tokens, -1 = none
num_tool_calls      [N]         int32 calls executed
stop_reasons        [N]         str: eos | stop_sequence | length | max_turns | tool_boundary
tool_calls          list        per row, list of dicts {turn, name, arguments, ok, text,
                                error_kind, seconds}
==================  ==========  ==============================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

STOP_REASONS = ("eos", "stop_sequence", "length", "max_turns", "tool_boundary")


@dataclasses.dataclass
class TrajectoryRecord:
    """One trajectory being built on the host (token ids are the truth, appended only)."""

    uid: int
    group_id: int
    ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_length: int
    turn_starts: list[int] = dataclasses.field(default_factory=list)
    turn_ends: list[int] = dataclasses.field(default_factory=list)
    tool_calls: list[dict] = dataclasses.field(default_factory=list)
    stop_reason: str = ""

    @classmethod
    def from_prompt(cls, uid: int, group_id: int, prompt_ids: Sequence[int]) -> "TrajectoryRecord":
        ids = [int(t) for t in prompt_ids]
        return cls(
            uid=uid,
            group_id=group_id,
            ids=ids,
            loss_mask=[0] * len(ids),
            logprobs=[0.0] * len(ids),
            prompt_length=len(ids),
        )

    def append_generated(self, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        self.turn_starts.append(len(self.ids))
        self.ids.extend(int(t) for t in ids)
        self.loss_mask.extend([1] * len(ids))
        self.logprobs.extend(float(x) for x in logprobs)
        self.turn_ends.append(len(self.ids))

    def append_observation(self, ids: Sequence[int]) -> None:
        self.ids.extend(int(t) for t in ids)
        self.loss_mask.extend([0] * len(ids))
        self.logprobs.extend([0.0] * len(ids))

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class Trajectory:
    """A batch of trajectories as numpy arrays (module docstring for the fields)."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    sample_logprobs: np.ndarray
    prompt_lengths: np.ndarray
    lengths: np.ndarray
    group_ids: np.ndarray
    uids: np.ndarray
    num_turns: np.ndarray
    turn_starts: np.ndarray
    turn_ends: np.ndarray
    num_tool_calls: np.ndarray
    stop_reasons: np.ndarray
    tool_calls: list[list[dict]]
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_records(
        cls,
        records: Sequence[TrajectoryRecord],
        *,
        pad_id: int = 0,
        pad_multiple: int = 1,
        stats: dict[str, Any] | None = None,
    ) -> "Trajectory":
        """Stack records (in the given order), right-padding to a multiple of ``pad_multiple``."""
        n = len(records)
        longest = max([len(r) for r in records] + [1])
        t = -(-longest // pad_multiple) * pad_multiple
        k = max([len(r.turn_starts) for r in records] + [1])
        tokens = np.full((n, t), pad_id, np.int32)
        mask = np.zeros((n, t), np.int32)
        logprobs = np.zeros((n, t), np.float32)
        starts = np.full((n, k), -1, np.int32)
        ends = np.full((n, k), -1, np.int32)
        for i, r in enumerate(records):
            tokens[i, : len(r)] = r.ids
            mask[i, : len(r)] = r.loss_mask
            logprobs[i, : len(r)] = r.logprobs
            starts[i, : len(r.turn_starts)] = r.turn_starts
            ends[i, : len(r.turn_ends)] = r.turn_ends
        return cls(
            tokens=tokens,
            loss_mask=mask,
            sample_logprobs=logprobs,
            prompt_lengths=np.array([r.prompt_length for r in records], np.int32),
            lengths=np.array([len(r) for r in records], np.int32),
            group_ids=np.array([r.group_id for r in records], np.int32),
            uids=np.array([r.uid for r in records], np.int32),
            num_turns=np.array([len(r.turn_starts) for r in records], np.int32),
            turn_starts=starts,
            turn_ends=ends,
            num_tool_calls=np.array([len(r.tool_calls) for r in records], np.int32),
            stop_reasons=np.array([r.stop_reason for r in records], dtype="<U16"),
            tool_calls=[list(r.tool_calls) for r in records],
            stats=dict(stats or {}),
        )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    # ------------------------------------------------------------------ views
    def pad_to(self, length: int, *, pad_id: int = 0) -> "Trajectory":
        """Right-pad (never truncate) the per-token arrays to ``length`` columns."""
        t = self.tokens.shape[1]
        if length < t:
            raise ValueError(f"pad_to({length}) is shorter than the batch ({t} tokens)")
        extra = length - t

        def pad(a, value):
            return np.pad(a, ((0, 0), (0, extra)), constant_values=value)

        return dataclasses.replace(
            self,
            tokens=pad(self.tokens, pad_id),
            loss_mask=pad(self.loss_mask, 0),
            sample_logprobs=pad(self.sample_logprobs, 0.0),
        )

    def completion_ids(self, i: int) -> np.ndarray:
        """Tokens after the prompt of row ``i`` (generated turns and observations)."""
        return self.tokens[i, self.prompt_lengths[i] : self.lengths[i]]

    def turn_ids(self, i: int, turn: int) -> np.ndarray:
        """The ids generated in turn ``turn`` of row ``i``."""
        return self.tokens[i, self.turn_starts[i, turn] : self.turn_ends[i, turn]]

    def completion_text(self, i: int, tokenizer: Any, *, skip_special_tokens: bool = False) -> str:
        """Decoded completion of row ``i`` (for rewards and logs; never fed back as ids)."""
        return tokenizer.decode(
            self.completion_ids(i).tolist(), skip_special_tokens=skip_special_tokens
        )

    def to_batch(self) -> dict[str, np.ndarray]:
        """The arrays ``rl.train_step`` reads: tokens, positions, segment_ids, loss_mask,
        sample_logprobs (advantages are added by the trainer)."""
        t = self.tokens.shape[1]
        valid = np.arange(t)[None, :] < self.lengths[:, None]
        return {
            "tokens": self.tokens,
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), self.tokens.shape).copy(),
            "segment_ids": valid.astype(np.int32),
            "loss_mask": self.loss_mask,
            "sample_logprobs": self.sample_logprobs,
        }


def concat_trajectories(parts: Sequence[Trajectory], *, pad_id: int = 0) -> Trajectory:
    """Rows of ``parts`` stacked in order (per-token arrays right-padded to the widest;
    per-turn arrays to the most turns). ``stats`` holds the parts' ``stats`` as a list."""
    width = max(p.tokens.shape[1] for p in parts)
    turns = max(p.turn_starts.shape[1] for p in parts)
    parts = [p.pad_to(width, pad_id=pad_id) for p in parts]

    def turn_pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, turns - a.shape[1])), constant_values=-1)

    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return Trajectory(
        tokens=cat("tokens"), loss_mask=cat("loss_mask"), sample_logprobs=cat("sample_logprobs"),
        prompt_lengths=cat("prompt_lengths"), lengths=cat("lengths"), group_ids=cat("group_ids"),
        uids=cat("uids"), num_turns=cat("num_turns"),
        turn_starts=np.concatenate([turn_pad(p.turn_starts) for p in parts]),
        turn_ends=np.concatenate([turn_pad(p.turn_ends) for p in parts]),
        num_tool_calls=cat("num_tool_calls"), stop_reasons=cat("stop_reasons"),
        tool_calls=[c for p in parts for c in p.tool_calls],
        stats={"rounds": [p.stats for p in parts]},
    )


def take_rows(traj: Trajectory, rows: Sequence[int]) -> Trajectory:
    """The trajectories ``rows`` (in that order) of ``traj``."""
    idx = np.asarray(rows, np.int64)
    per_row = {f.name: getattr(traj, f.name)[idx] for f in dataclasses.fields(traj)
               if f.name not in ("tool_calls", "stats")}
    return Trajectory(**per_row, tool_calls=[traj.tool_calls[i] for i in idx],
                      stats=dict(traj.stats))
