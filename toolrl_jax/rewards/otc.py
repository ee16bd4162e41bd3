"""OTC tool-efficiency reward (Wang et al., "OTC: Optimal Tool Calls via Reinforcement Learning",
arXiv 2504.14870), as jitted pure functions of per-sample arrays.

m = tool calls of this trajectory; n = fewest calls among the *correct* trajectories of the same
group (OTC-GRPO; 0 when the group has none, and always 0 for OTC-PPO):

    f(m, n) = 0 if m = n = 0;  m if n = 0;  2nm / (m + n) otherwise
    r_tool  = 1 if f = 0 and n = 0;  cos(m pi / (2m + c)) if n = 0;  sin(f pi / (2n)) otherwise
    r       = alpha * r_tool * r_correct

r_tool peaks (= 1) at m = n and decays for fewer and more calls; with no reference (n = 0) it
decays with m. The reward is multiplicative, so an incorrect answer (r_correct = 0) scores 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from toolrl_jax.errors import ConfigError

__all__ = ["OTCConfig", "otc_group_min_calls", "otc_reward", "otc_tool_reward"]


@dataclass(frozen=True, kw_only=True)
class OTCConfig:
    """alpha: scale; c: smoothing constant of the cos form (larger = slower decay);
    mode: 'grpo' (n from the group's correct samples) or 'ppo' (n = 0, cos form only)."""

    alpha: float = 1.0
    c: float = 1.0
    mode: Literal["grpo", "ppo"] = "grpo"

    def __post_init__(self):
        if self.mode not in ("grpo", "ppo"):
            raise ConfigError(f"OTC mode must be 'grpo' or 'ppo', got {self.mode!r}")
        if self.c <= 0:
            raise ConfigError(f"OTC c must be > 0, got {self.c}")


def otc_group_min_calls(num_calls, correct, group_ids):
    """n [B] int32: min ``num_calls`` over correct samples of each sample's group (0 if none).

    Args: num_calls [B] int, correct [B] bool, group_ids [B] int. O(B^2) masks, fine for B <= ~8k.
    """
    m = jnp.asarray(num_calls, jnp.int32)
    same = jnp.asarray(group_ids)[:, None] == jnp.asarray(group_ids)[None, :]
    big = jnp.iinfo(jnp.int32).max
    cand = jnp.where(same & jnp.asarray(correct, bool)[None, :], m[None, :], big)
    n = jnp.min(cand, axis=1)
    return jnp.where(n == big, 0, n)


def _r_tool(m, n, c):
    m = m.astype(jnp.float32)
    n = n.astype(jnp.float32)
    f = jnp.where((m == 0) & (n == 0), 0.0, jnp.where(n == 0, m, 2 * n * m / jnp.maximum(m + n, 1e-9)))
    cos_form = jnp.cos(m * jnp.pi / (2 * m + c))
    sin_form = jnp.sin(f * jnp.pi / (2 * jnp.maximum(n, 1e-9)))
    return jnp.where((f == 0) & (n == 0), 1.0, jnp.where(n == 0, cos_form, sin_form)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("config",))
def otc_tool_reward(num_calls, correct, group_ids, config: OTCConfig = OTCConfig()):
    """r_tool [B] float32 (see module docs)."""
    m = jnp.asarray(num_calls, jnp.int32)
    if config.mode == "ppo":
        n = jnp.zeros_like(m)
    else:
        n = otc_group_min_calls(m, correct, group_ids)
    return _r_tool(m, n, config.c)


@functools.partial(jax.jit, static_argnames=("config",))
def otc_reward(num_calls, correctness, group_ids, correct=None, config: OTCConfig = OTCConfig()):
    """alpha * r_tool * r_correct, [B] float32.

    Args:
      num_calls: [B] tool calls per trajectory.
      correctness: [B] float correctness reward r_correct (e.g. exact match 0/1, F1).
      group_ids: [B] prompt group of each sample.
      correct: [B] bool used to find n; default ``correctness > 0``.
    """
    correctness = jnp.asarray(correctness, jnp.float32)
    if correct is None:
        correct = correctness > 0
    r_tool = otc_tool_reward(num_calls, correct, group_ids, config)
    return (config.alpha * r_tool * correctness).astype(jnp.float32)
