"""A reward composed of weighted named components: R = sum_i w_i * R_i.

Components are [B] arrays computed by the other reward modules (``toolrl`` total, ``overlong``
penalty, ``otc``, ``outcome``, ...). The weights live in a frozen config that reads from a plain
mapping (e.g. a YAML section ``reward: {toolrl: 1.0, overlong: 0.5}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from toolrl_jax.errors import ConfigError

__all__ = ["ComposeConfig", "compose_rewards"]


@dataclass(frozen=True, kw_only=True)
class ComposeConfig:
    """weights: ((component name, weight), ...) in summation order."""

    weights: tuple[tuple[str, float], ...]

    def __post_init__(self):
        try:
            w = tuple((str(k), float(v)) for k, v in self.weights)
        except (TypeError, ValueError):
            raise ConfigError(f"reward weights must be (name, number) pairs, got {self.weights!r}") from None
        if not w:
            raise ConfigError("reward weights are empty: give at least one component")
        if len({k for k, _ in w}) != len(w):
            raise ConfigError(f"reward weights name a component twice: {[k for k, _ in w]}")
        object.__setattr__(self, "weights", w)

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float]) -> ComposeConfig:
        if not isinstance(weights, Mapping):
            raise ConfigError(f"reward weights must be a mapping name -> weight, got {type(weights).__name__}")
        return cls(weights=tuple(weights.items()))


def compose_rewards(components: Mapping[str, jax.Array], config: ComposeConfig):
    """(total [B] float32, {name: weighted component [B]}) for the configured weights.

    Raises ConfigError when a weighted component is missing (checked at trace time); components
    that are not weighted are ignored. Pure and jit-compatible (``config`` static).
    """
    missing = [k for k, _ in config.weights if k not in components]
    if missing:
        raise ConfigError(f"reward components {missing} are weighted but not computed; "
                          f"available: {sorted(components)}")
    weighted = {k: (w * jnp.asarray(components[k], jnp.float32)) for k, w in config.weights}
    total = sum(weighted.values())
    return jnp.asarray(total, jnp.float32), weighted
