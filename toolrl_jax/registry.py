"""Name -> builder tables: how a method becomes a config value.

Every pluggable concern (reward components, advantage estimators, data sources, environments,
rollout strategies) keeps one :class:`Registry` in its own module; adding a method is one
decorated function there (or in user code imported before the run)::

    REWARDS = Registry("reward component", config_key="reward.components")

    @REWARDS.register("otc")
    def otc(ctx, cfg): ...

    REWARDS.get("otc")        # the function; an unknown name is a ConfigError naming the key,
                              # the closest registered name and every registered one
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from toolrl_jax.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A table of named entries of one kind (functions, builders or classes).

    Args:
      kind: what an entry is, for messages ("reward component").
      config_key: the YAML key that names entries, for messages ("reward.components").
    """

    def __init__(self, kind: str, *, config_key: str = ""):
        self.kind = kind
        self.config_key = config_key
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")`` adds the decorated object under ``name``."""

        def add(entry: T) -> T:
            if name in self._entries and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; a :class:`ConfigError` naming the fix otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f" did you mean {close[0]!r}?" if close else ""
            where = f"{self.config_key}: " if self.config_key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}.{hint} Registered: "
                f"{', '.join(sorted(self._entries)) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
