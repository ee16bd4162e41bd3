"""Optional code-use shaping for ReTool-style training (our own design, NOT from the ReTool paper).

ReTool (arXiv 2504.11536) trains with the outcome reward alone (+1 / -1 on the final
``\\boxed{}``, ``rewards.math.retool_reward``). This module adds a small, optional term that can be
composed with it (weight in ``reward.components``):

    r_code = bonus   * [correct and cells >= 1]
           - penalty * failed_cells / max(cells, 1)

with ``cells`` the executed code cells of a response (its ``<interpreter>`` blocks) and
``failed_cells`` those whose interpreter text ends with an error status line
(``tools.code_interpreter.interpreter_status``). Defaults ``bonus = 0.1``, ``penalty = 0.1``: at
most a tenth of the outcome reward's range, so the answer stays what is optimised. A response
without code gets 0.

Host side: :func:`interpreter_blocks`, :func:`cell_counts` (text -> counts, linear time).
Device side: :func:`code_use_reward` (jitted).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolrl_jax.errors import ConfigError
from toolrl_jax.tools.code_interpreter import interpreter_status

__all__ = ["CellCounts", "CodeUseConfig", "cell_counts", "code_use_reward", "interpreter_blocks"]

_OPEN, _CLOSE = "<interpreter>", "</interpreter>"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodeUseConfig:
    """bonus: added when a correct answer used code; penalty: times the failed-cell fraction."""

    bonus: float = 0.1
    penalty: float = 0.1

    def __post_init__(self):
        if self.bonus < 0 or self.penalty < 0:
            raise ConfigError(f"reward.code_use bonus and penalty must be >= 0, got "
                              f"{self.bonus}, {self.penalty}")


@dataclasses.dataclass(frozen=True)
class CellCounts:
    """[B] int32 arrays: executed cells and failed cells per response."""

    cells: np.ndarray
    failed: np.ndarray


def interpreter_blocks(text: str) -> list[str]:
    """Texts inside the ``<interpreter>...</interpreter>`` blocks of ``text`` (stripped of the
    surrounding newlines), in order. An unclosed block is ignored. Linear time; never raises."""
    if not isinstance(text, str):
        return []
    out, pos = [], 0
    while True:
        start = text.find(_OPEN, pos)
        if start < 0:
            return out
        end = text.find(_CLOSE, start + len(_OPEN))
        if end < 0:
            return out
        out.append(text[start + len(_OPEN):end].strip("\n"))
        pos = end + len(_CLOSE)


def cell_counts(texts: Sequence[str]) -> CellCounts:
    """Executed and failed cells of each response text."""
    blocks = [interpreter_blocks(t) for t in texts]
    return CellCounts(
        cells=np.array([len(b) for b in blocks], np.int32),
        failed=np.array([sum(interpreter_status(x) == "error" for x in b) for b in blocks], np.int32),
    )


@functools.partial(jax.jit, static_argnames=("config",))
def code_use_reward(correct, cells, failed_cells, config: CodeUseConfig = CodeUseConfig()):
    """[B] float32 ``bonus*[correct & cells>=1] - penalty*failed/max(cells,1)`` from
    correct [B] bool, cells [B] int, failed_cells [B] int."""
    cells = jnp.asarray(cells, jnp.float32)
    failed = jnp.asarray(failed_cells, jnp.float32)
    used = jnp.asarray(correct, bool) & (cells >= 1)
    r = config.bonus * used.astype(jnp.float32) - config.penalty * failed / jnp.maximum(cells, 1.0)
    return r.astype(jnp.float32)
