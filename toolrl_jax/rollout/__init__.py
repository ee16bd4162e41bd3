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

Submodules are imported lazily so `import toolrl_jax.rollout` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SamplingConfig": "sampling",
    "sample_from_logits": "sampling",
    "process_logits": "sampling",
    "Sampler": "sampler",
    "SampleOutput": "sampler",
    "DecodeState": "sampler",
    "bucket_length": "sampler",
    "RolloutConfig": "engine",
    "RolloutEngine": "engine",
    "RolloutRequest": "engine",
    "expand_requests": "engine",
    "RolloutStats": "engine",
    "Environment": "turns",
    "ToolTurnHandler": "turns",
    "tool_call_extractor": "turns",
    "code_extractor": "turns",
    "SlotScheduler": "scheduler",
    "SlotState": "scheduler",
    "Trajectory": "trajectory",
    "TrajectoryRecord": "trajectory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"toolrl_jax.rollout.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'toolrl_jax.rollout' has no attribute {name!r}")
