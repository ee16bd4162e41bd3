"""Slot state machine of the rollout engine (pure host code, no model)."""

from __future__ import annotations

import concurrent.futures

import pytest

from toolrl_jax.rollout import stops as stops_lib
from toolrl_jax.rollout.scheduler import (
    Extend,
    RowCopy,
    SlotScheduler,
    SlotState,
    plan_prefill,
    turn_end_reason,
)
from toolrl_jax.rollout.trajectory import TrajectoryRecord


class FakeToolTurn:
    def __init__(self):
        self.future = concurrent.futures.Future()

    def done(self):
        return self.future.done()


def start(uid, prompt):
    return TrajectoryRecord.from_prompt(uid, 0, prompt)


@pytest.mark.parametrize(
    "code, which, turns, expected",
    [
        (stops_lib.EOS, -1, 1, "eos"),
        (stops_lib.EOS, 0, 1, "eos"),  # eos wins over a stop sequence ending on the same token
        (stops_lib.LENGTH, -1, 1, "length"),
        (stops_lib.STOP_SEQUENCE, 0, 1, None),  # tool stop, turns left: run the tools
        (stops_lib.STOP_SEQUENCE, 1, 1, None),
        (stops_lib.STOP_SEQUENCE, 2, 1, "stop_sequence"),  # a trajectory stop row
        (stops_lib.STOP_SEQUENCE, 0, 3, "max_turns"),  # tool stop in the last allowed turn
    ],
)
def test_turn_end_reason(code, which, turns, expected):
    assert turn_end_reason(code, which, num_tool_stops=2, turns=turns, max_turns=3) == expected


def test_single_turn_never_asks_for_tools():
    for which in (0, 1, 5):
        got = turn_end_reason(
            stops_lib.STOP_SEQUENCE, which, num_tool_stops=0, turns=1, max_turns=1
        )
        assert got == "stop_sequence"


def test_slot_walks_through_a_tool_turn_and_finishes_on_eos():
    sched = SlotScheduler(2, [[1, 2, 3]], refill=True)
    assert sched.busy()
    (e,) = sched.admit(start)
    assert e == Extend(slot=0, ids=(1, 2, 3), reset=True, uid=0)
    assert sched.in_state(SlotState.READY) == [0] and sched.in_state(SlotState.FREE) == [1]
    assert not sched.queue and sched.admit(start) == []

    sched.extended([e])
    slot = sched.slots[0]
    assert slot.state is SlotState.DECODING and slot.cached == 3

    # the turn [7, 8, 9] stops on a tool stop; 9 is the pending token, not in the cache
    record = sched.end_turn(0, [7, 8, 9], [-0.1, -0.2, -0.3])
    assert record.ids == [1, 2, 3, 7, 8, 9] and slot.cached == 5
    tool_turn = FakeToolTurn()
    sched.await_tools(0, tool_turn)
    assert slot.state is SlotState.AWAITING_TOOLS
    assert sched.tools_done() == [] and sched.tool_futures() == [tool_turn.future]

    tool_turn.future.set_result([])  # tools done
    assert sched.tools_done() == [0]
    e2 = sched.resume(0, [40, 41])
    assert e2 == Extend(slot=0, ids=(9, 40, 41), reset=False, uid=None)
    assert slot.state is SlotState.READY and slot.tool_turn is None
    assert record.ids == [1, 2, 3, 7, 8, 9, 40, 41]
    assert record.loss_mask == [0, 0, 0, 1, 1, 1, 0, 0]

    sched.extended([e2])
    assert slot.state is SlotState.DECODING and slot.cached == 8 == len(record.ids)
    sched.end_turn(0, [5, 2], [-0.5, -0.6])
    done = sched.finish(0, "eos")
    assert done is record and record.stop_reason == "eos"
    assert slot.state is SlotState.FREE and slot.record is None and slot.cached == 0
    assert not sched.busy() and sched.records() == [record]


def test_finish_on_length_from_decoding_and_from_awaiting_tools():
    sched = SlotScheduler(2, [[1], [2]], refill=True)
    extends = sched.admit(start)
    sched.extended(extends)
    sched.end_turn(0, [3, 4], [0.0, 0.0])
    sched.finish(0, "length")  # DECODING -> FREE (turn budget)
    sched.end_turn(1, [5, 6], [0.0, 0.0])
    sched.await_tools(1, FakeToolTurn())
    sched.finish(1, "length")  # AWAITING_TOOLS -> FREE (observation does not fit)
    assert [r.uid for r in sched.records()] == [0, 1]
    assert [r.stop_reason for r in sched.records()] == ["length", "length"]
    assert sched.in_state(SlotState.FREE) == [0, 1] and not sched.busy()


def test_illegal_transitions_are_refused():
    sched = SlotScheduler(1, [[1, 2]], refill=True)
    with pytest.raises(RuntimeError, match="FREE -> DECODING"):
        sched.extended([Extend(slot=0, ids=(1,))])
    sched.admit(start)
    with pytest.raises(RuntimeError, match="READY -> AWAITING_TOOLS"):
        sched.await_tools(0, FakeToolTurn())
    with pytest.raises(RuntimeError, match="READY -> FREE"):
        sched.finish(0, "eos")


def test_refill_admits_into_any_free_slot_waves_wait_for_all():
    for refill, admitted in ((True, [2]), (False, [])):
        sched = SlotScheduler(2, [[1], [2], [3]], refill=refill)
        sched.extended(sched.admit(start))
        sched.end_turn(0, [9], [0.0])
        sched.finish(0, "eos")  # slot 0 frees while slot 1 still decodes
        assert [e.uid for e in sched.admit(start)] == admitted
    sched.end_turn(1, [9], [0.0])
    sched.finish(1, "eos")  # the wave is over
    assert [(e.slot, e.uid) for e in sched.admit(start)] == [(0, 2)]


def test_plan_prefill_shares_identical_fresh_prompts():
    group = (1, 2, 3)
    extends = [
        Extend(slot=0, ids=group, reset=True, uid=0),
        Extend(slot=1, ids=group, reset=True, uid=1),
        Extend(slot=2, ids=(7,), reset=True, uid=2),  # one token: cannot be split
        Extend(slot=3, ids=(5, 6)),  # an observation, not a prompt
        Extend(slot=4, ids=group, reset=True, uid=4),
        Extend(slot=5, ids=(8, 9), reset=True, uid=5),  # alone: prefilled as it is
    ]
    plan = plan_prefill(extends, share_prompts=True)
    assert plan.first == (
        extends[2],
        extends[3],
        extends[5],
        Extend(slot=0, ids=(1, 2), reset=True, uid=None),
    )
    assert plan.copies == (RowCopy(0, 1), RowCopy(0, 4))
    assert plan.last == tuple(Extend(slot=s, ids=(3,), uid=s) for s in (0, 1, 4))
    assert plan.num_tokens == 1 + 2 + 2 + 2 + 3
    separate = plan_prefill(extends, share_prompts=False)
    assert separate.first == tuple(extends) and not separate.copies and not separate.last
    assert separate.num_tokens == sum(len(e.ids) for e in extends) == 14
