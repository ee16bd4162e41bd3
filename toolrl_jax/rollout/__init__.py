"""Rollouts: the jitted KV-cache sampler and the multi-turn host engine (see docs/rollout.md).

- `sampling`: `SamplingConfig` (temperature / top-p / top-k / greedy) and pure sampling functions.
- `stops`: EOS ids and stop sequences as device arrays.
- `sampler`: `Sampler` with jitted `extend` (prefill of new tokens for some slots) and `decode`
  (a `lax.while_loop` of one-token steps), the KV cache donated.
- `engine`: `RolloutEngine` (the host loop: prefill, decode, stop on tool tags, continuous
  refill) producing a `Trajectory` batch of numpy arrays.
- `scheduler`: `SlotScheduler` and the slot state machine (`SlotState`: free, ready, decoding,
  awaiting tools).
- `turns`: `Environment` (executor, call extractor, observation format, stop strings) and the
  `ToolTurnHandler` (parse -> submit -> render observation ids).
"""

from toolrl_jax.rollout.engine import (
    RolloutConfig,
    RolloutEngine,
    RolloutRequest,
    RolloutStats,
    expand_requests,
)
from toolrl_jax.rollout.sampler import DecodeState, SampleOutput, Sampler, bucket_length
from toolrl_jax.rollout.sampling import SamplingConfig, process_logits, sample_from_logits
from toolrl_jax.rollout.scheduler import SlotScheduler, SlotState
from toolrl_jax.rollout.trajectory import Trajectory, TrajectoryRecord
from toolrl_jax.rollout.turns import (
    Environment,
    ToolTurnHandler,
    code_extractor,
    tool_call_extractor,
)

__all__ = [
    "DecodeState",
    "Environment",
    "RolloutConfig",
    "RolloutEngine",
    "RolloutRequest",
    "RolloutStats",
    "SampleOutput",
    "Sampler",
    "SamplingConfig",
    "SlotScheduler",
    "SlotState",
    "ToolTurnHandler",
    "Trajectory",
    "TrajectoryRecord",
    "bucket_length",
    "code_extractor",
    "expand_requests",
    "process_logits",
    "sample_from_logits",
    "tool_call_extractor",
]
