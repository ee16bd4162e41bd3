"""Shaping terms added to a task reward.

* DAPO overlong shaping (Yu et al., arXiv 2503.14476), lengths |y| in tokens:
      R_len = 0                                    if |y| <= L_max - L_cache
              ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
              -1                                   if |y| > L_max
  (times ``scale``). A soft penalty ramp over the last ``L_cache`` tokens of the budget.
* Tool-Star hierarchical reward with the multi-tool bonus (Dong et al., arXiv 2505.16410):
      R = -1                 if the format is wrong
          acc + r_M          if acc > 0 and >= ``min_tools`` distinct tools were used (r_M = 0.1)
          acc                if acc > 0
          0                  otherwise
  acc is the answer score (F1 or exact match).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from toolrl_jax.errors import ConfigError

__all__ = [
    "OverlongConfig",
    "ToolStarConfig",
    "count_distinct_tools",
    "dapo_overlong_penalty",
    "tool_star_reward",
]


@dataclass(frozen=True, kw_only=True)
class OverlongConfig:
    """max_length: L_max (the generation budget); cache_length: L_cache (the ramp).

    0 for either means "derived by the caller" (the trainer uses the rollout's token budget for
    L_max and L_max / 4 for L_cache); :meth:`resolved` fills them in."""

    max_length: int = 0
    cache_length: int = 0
    scale: float = 1.0

    def resolved(self, max_length: int) -> "OverlongConfig":
        """This config with a zero ``max_length`` / ``cache_length`` filled in."""
        lmax = self.max_length or int(max_length)
        return OverlongConfig(max_length=lmax, cache_length=self.cache_length or max(lmax // 4, 1),
                              scale=self.scale)

    def __post_init__(self):
        if self.max_length < 0 or self.cache_length < 0:
            raise ConfigError("overlong max_length and cache_length must be >= 0 (0: derived)")
        if self.max_length and self.cache_length and not self.cache_length <= self.max_length:
            raise ConfigError(f"overlong cache_length must be in (0, max_length], got {self.cache_length}")


@functools.partial(jax.jit, static_argnames=("config",))
def dapo_overlong_penalty(lengths, config: OverlongConfig):
    """[B] float32 DAPO soft overlong penalty of response lengths [B] (tokens)."""
    if not (config.max_length and config.cache_length):
        raise ConfigError("overlong: max_length and cache_length must be set (OverlongConfig.resolved)")
    y = jnp.asarray(lengths, jnp.float32)
    free = config.max_length - config.cache_length
    ramp = (free - y) / config.cache_length
    r = jnp.where(y <= free, 0.0, jnp.where(y <= config.max_length, ramp, -1.0))
    return (config.scale * r).astype(jnp.float32)


@dataclass(frozen=True, kw_only=True)
class ToolStarConfig:
    """bonus: r_M; min_tools: distinct tools needed for it; format_penalty: reward on bad format."""

    bonus: float = 0.1
    min_tools: int = 2
    format_penalty: float = -1.0


@functools.partial(jax.jit, static_argnames=("config",))
def tool_star_reward(format_ok, accuracy, distinct_tools, config: ToolStarConfig = ToolStarConfig()):
    """[B] float32 Tool-Star reward from format_ok [B] bool, accuracy [B] float, distinct_tools [B] int."""
    acc = jnp.asarray(accuracy, jnp.float32)
    multi = jnp.asarray(distinct_tools) >= config.min_tools
    good = jnp.where(acc > 0, acc + jnp.where(multi, config.bonus, 0.0), 0.0)
    return jnp.where(jnp.asarray(format_ok, bool), good, config.format_penalty).astype(jnp.float32)


def count_distinct_tools(text: str, tags: Iterable[str] = ("search", "python")) -> int:
    """How many of the tool tags (``<search>``, ``<python>``, ...) are opened in ``text``."""
    if not isinstance(text, str):
        return 0
    return sum(1 for t in tags if f"<{t}>" in text)
