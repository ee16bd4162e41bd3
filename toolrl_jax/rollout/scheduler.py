"""Slot scheduler of the rollout engine: which trajectory occupies which sampler row, in what state.

Each of the sampler's ``num_slots`` rows is a :class:`Slot` with an explicit :class:`SlotState`:

::

    FREE --admit--> READY --extend--> DECODING --turn ends--> FREE            (eos, length,
                      ^                   |                                    stop_sequence,
                      |                   +--tool stop--> AWAITING_TOOLS       max_turns)
                      |                                        |
                      +------------ observation fits ----------+--too long--> FREE (length)

- ``READY``: the slot has ids to prefill (a fresh prompt, or the pending token plus an
  observation) before it decodes; an :class:`Extend` record carries them to the sampler.
- ``DECODING``: the row is live in the jitted decode loop.
- ``AWAITING_TOOLS``: the turn stopped on a tool stop sequence; the calls run on the executor
  while the other rows keep decoding.

:func:`turn_end_reason` is the pure rule for the ``DECODING`` exit, :func:`plan_prefill` the
pure rule for sharing one prompt prefill among the samples of a group. :class:`SlotScheduler`
holds the slots, the queue of waiting requests and the finished records; it knows nothing of
models, tokenizers or tools.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from toolrl_jax.rollout import stops as stops_lib
from toolrl_jax.rollout.trajectory import TrajectoryRecord

__all__ = [
    "Extend",
    "PrefillPlan",
    "RowCopy",
    "Slot",
    "SlotScheduler",
    "SlotState",
    "plan_prefill",
    "turn_end_reason",
]


class SlotState(enum.Enum):
    FREE = "free"
    READY = "ready"  # ids waiting to be prefilled, then decoding
    DECODING = "decoding"
    AWAITING_TOOLS = "awaiting_tools"


#: allowed transitions (``Slot.to`` refuses any other).
TRANSITIONS: dict[SlotState, frozenset[SlotState]] = {
    SlotState.FREE: frozenset({SlotState.READY}),
    SlotState.READY: frozenset({SlotState.DECODING}),
    SlotState.DECODING: frozenset({SlotState.AWAITING_TOOLS, SlotState.FREE}),
    SlotState.AWAITING_TOOLS: frozenset({SlotState.READY, SlotState.FREE}),
}


@dataclasses.dataclass(frozen=True)
class Extend:
    """Ids to prefill into one slot (``Sampler.extend``).

    Attributes:
      slot: the sampler row.
      ids: the new tokens (a prompt, or the pending token then an observation).
      reset: a fresh prompt: clear the row's cache first.
      uid: start the PRNG stream ``fold_in(key(seed), uid)`` on this row; None continues the
        row's current stream.
    """

    slot: int
    ids: tuple[int, ...]
    reset: bool = False
    uid: int | None = None


@dataclasses.dataclass(frozen=True)
class RowCopy:
    """Copy the KV cache row ``src`` to row ``dst`` (``Sampler.copy_rows``)."""

    src: int
    dst: int


@dataclasses.dataclass(frozen=True)
class PrefillPlan:
    """Prefill in three passes: ``first`` extends, then ``copies`` of cache rows, then ``last``
    extends (the last prompt token of every slot that got a copied prefix)."""

    first: tuple[Extend, ...]
    copies: tuple[RowCopy, ...] = ()
    last: tuple[Extend, ...] = ()

    @property
    def num_tokens(self) -> int:
        """Tokens run through the model (prefill compute)."""
        return sum(len(e.ids) for e in self.first + self.last)


def plan_prefill(extends: Sequence[Extend], *, share_prompts: bool) -> PrefillPlan:
    """Fresh prompts with identical ids (the samples of a GRPO group admitted together) share
    one prefill: the group's first slot gets the prompt minus its last token, its cache rows are
    copied to the others, and every slot is then extended by the last token alone, which samples
    its first token from its own stream. Other extends (observations, single prompts, prompts of
    one token) are prefilled as they are."""
    if not share_prompts:
        return PrefillPlan(first=tuple(extends))
    groups: dict[tuple[int, ...], list[Extend]] = {}
    for e in extends:
        if e.reset and len(e.ids) >= 2:
            groups.setdefault(e.ids, []).append(e)
    shared = {ids: members for ids, members in groups.items() if len(members) > 1}
    first = [e for e in extends if not (e.reset and e.ids in shared)]
    copies, last = [], []
    for ids, members in shared.items():
        src = members[0].slot
        first.append(Extend(slot=src, ids=ids[:-1], reset=True))
        copies += [RowCopy(src=src, dst=m.slot) for m in members[1:]]
        last += [Extend(slot=m.slot, ids=ids[-1:], uid=m.uid) for m in members]
    return PrefillPlan(first=tuple(first), copies=tuple(copies), last=tuple(last))


def turn_end_reason(
    stop_code: int, which: int, *, num_tool_stops: int, turns: int, max_turns: int
) -> str | None:
    """Why the trajectory ends after a turn, or None when the turn asks for tools.

    Args:
      stop_code: the sampler's stop reason (``stops.EOS | STOP_SEQUENCE | LENGTH``).
      which: the matched row of the stop table; rows ``[0, num_tool_stops)`` are tool stops.
      turns: generated turns so far, this one included.
      max_turns: most generated turns; a tool call in the last one is not run.
    Returns:
      'eos' | 'length' | 'stop_sequence' | 'max_turns', or None (tool turn).
    """
    if stop_code == stops_lib.EOS:
        return "eos"
    if stop_code == stops_lib.LENGTH:
        return "length"
    if not (stop_code == stops_lib.STOP_SEQUENCE and 0 <= which < num_tool_stops):
        return "stop_sequence"
    if turns >= max_turns:
        return "max_turns"
    return None


@dataclasses.dataclass
class Slot:
    """Host view of one sampler row.

    Attributes:
      state: the :class:`SlotState`.
      record: the trajectory in this row (None when FREE).
      cached: tokens of ``record.ids`` in the row's KV cache (the pending token is not).
      tool_turn: the submitted tool turn while AWAITING_TOOLS (``turns.ToolTurn``).
    """

    state: SlotState = SlotState.FREE
    record: TrajectoryRecord | None = None
    cached: int = 0
    tool_turn: Any = None

    def to(self, state: SlotState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"slot transition {self.state.name} -> {state.name} is not allowed")
        self.state = state


class SlotScheduler:
    """Slots, the queue of waiting requests and the finished records of one ``run``.

    Args:
      num_slots: sampler rows.
      requests: the requests, in uid order (uid = index).
      refill: admit into a slot as soon as it frees (continuous batching); False admits a new
        wave only when every slot is free (batch-synchronous).
    """

    def __init__(self, num_slots: int, requests: Sequence[Any], *, refill: bool):
        self.slots = [Slot() for _ in range(num_slots)]
        self.queue: deque[tuple[int, Any]] = deque(enumerate(requests))
        self.refill = bool(refill)
        self.finished: dict[int, TrajectoryRecord] = {}

    # ---- queries
    def busy(self) -> bool:
        """Requests wait or some slot is occupied."""
        return bool(self.queue) or any(s.state is not SlotState.FREE for s in self.slots)

    def in_state(self, state: SlotState) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.state is state]

    def tools_done(self) -> list[int]:
        """Slots awaiting tools whose results have arrived."""
        awaiting = self.in_state(SlotState.AWAITING_TOOLS)
        return [i for i in awaiting if self.slots[i].tool_turn.done()]

    def tool_futures(self) -> list[Any]:
        return [self.slots[i].tool_turn.future for i in self.in_state(SlotState.AWAITING_TOOLS)]

    def occupied_uids(self) -> list[int]:
        return [s.record.uid for s in self.slots if s.state is not SlotState.FREE]

    def records(self) -> list[TrajectoryRecord]:
        """Finished trajectories in uid order."""
        return [self.finished[uid] for uid in sorted(self.finished)]

    # ---- transitions
    def admit(self, start: Callable[[int, Any], TrajectoryRecord]) -> list[Extend]:
        """FREE -> READY for waiting requests (``start(uid, request)`` builds the record)."""
        free = self.in_state(SlotState.FREE)
        if not self.queue or not (self.refill or len(free) == len(self.slots)):
            return []
        extends = []
        for i in free[: len(self.queue)]:
            uid, request = self.queue.popleft()
            slot = self.slots[i]
            slot.record, slot.cached = start(uid, request), 0
            slot.to(SlotState.READY)
            extends.append(Extend(slot=i, ids=tuple(slot.record.ids), reset=True, uid=uid))
        return extends

    def extended(self, extends: Sequence[Extend]) -> None:
        """READY -> DECODING once the ids are in the cache."""
        for e in extends:
            slot = self.slots[e.slot]
            slot.cached += len(e.ids)
            slot.to(SlotState.DECODING)

    def end_turn(self, i: int, ids: Sequence[int], logprobs: Sequence[float]) -> TrajectoryRecord:
        """A DECODING row stopped: its turn joins the record (every token but the last, the
        pending one, is in the cache now). The caller then calls ``await_tools`` or ``finish``."""
        slot = self.slots[i]
        slot.record.append_generated(ids, logprobs)
        slot.cached += len(ids) - 1
        return slot.record

    def await_tools(self, i: int, tool_turn: Any) -> None:
        """DECODING -> AWAITING_TOOLS."""
        self.slots[i].tool_turn = tool_turn
        self.slots[i].to(SlotState.AWAITING_TOOLS)

    def resume(self, i: int, observation_ids: Sequence[int]) -> Extend:
        """AWAITING_TOOLS -> READY: the observation joins the record; the extend holds the
        pending token then the observation."""
        slot = self.slots[i]
        pending = slot.record.ids[-1]  # sampled last, not in the cache yet
        slot.record.append_observation(observation_ids)
        slot.tool_turn = None
        slot.to(SlotState.READY)
        return Extend(slot=i, ids=(pending, *(int(t) for t in observation_ids)))

    def finish(self, i: int, reason: str) -> TrajectoryRecord:
        """DECODING / AWAITING_TOOLS -> FREE: the trajectory is done with ``reason``."""
        slot = self.slots[i]
        record = slot.record
        record.stop_reason = reason
        self.finished[record.uid] = record
        slot.to(SlotState.FREE)
        slot.record, slot.cached, slot.tool_turn = None, 0, None
        return record
