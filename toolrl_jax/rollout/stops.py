"""Stop conditions as arrays: end-of-sequence ids and stop sequences matched on device.

A row stops when its newest token is one of ``eos_ids`` (reason ``EOS``), when the tail of the
tokens generated in its current turn equals one of the stop sequences (``STOP_SEQUENCE``), or when
it reaches its length budget (``LENGTH``). Stop sequences are token-id sequences (e.g. the ids of
``</tool_call>`` or ``</code>``), right-aligned into a ``[num_stops, max_stop_len]`` table padded
on the left with -1 (wildcard), so the match is one static-shape comparison of the last
``max_stop_len`` generated ids against every row of the table.

A string can tokenize differently depending on its context (``"</code>"`` vs ``"</code>\\n"``);
pass every variant you expect (the chat helper's ``stop_sequences_to_ids``); the engine also
records which table row matched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolrl_jax.errors import ConfigError

# stop reasons (int32 codes on device, names on host)
RUNNING = 0
EOS = 1
STOP_SEQUENCE = 2
LENGTH = 3
STOP_REASON_NAMES = {
    RUNNING: "running",
    EOS: "eos",
    STOP_SEQUENCE: "stop_sequence",
    LENGTH: "length",
}

_PAD = -1  # wildcard in the stop table / empty eos slot


@dataclasses.dataclass(frozen=True)
class StopTable:
    """Device arrays describing when rows stop.

    Attributes:
      eos_ids: ``[E]`` int32, padded with -1 (never matches a real token).
      stop_seqs: ``[NS, L]`` int32, each sequence right-aligned, -1 on the left = wildcard.
      stop_lens: ``[NS]`` int32 true length of each sequence (0 for a padding row: never matches).
    """

    eos_ids: np.ndarray
    stop_seqs: np.ndarray
    stop_lens: np.ndarray

    @property
    def max_stop_len(self) -> int:
        return int(self.stop_seqs.shape[1])

    def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        return jnp.asarray(self.eos_ids), jnp.asarray(self.stop_seqs), jnp.asarray(self.stop_lens)


def make_stop_table(
    eos_ids: Sequence[int] = (),
    stop_sequences: Sequence[Sequence[int]] = (),
    *,
    min_eos_slots: int = 4,
    min_stops: int = 4,
    min_stop_len: int = 8,
) -> StopTable:
    """Build a ``StopTable``; sizes are padded to ``min_*`` (then powers of two) so a run compiles
    one program for any stop configuration that fits."""
    eos = [int(t) for t in eos_ids]
    seqs = [[int(t) for t in s] for s in stop_sequences]
    for s in seqs:
        if not s:
            raise ConfigError(
                "stop sequence is empty: give at least one token id per stop sequence"
            )
    n_eos = _bucket(max(len(eos), 1), min_eos_slots)
    n_stop = _bucket(max(len(seqs), 1), min_stops)
    max_len = _bucket(max([len(s) for s in seqs] + [1]), min_stop_len)
    eos_arr = np.full((n_eos,), _PAD, np.int32)
    eos_arr[: len(eos)] = eos
    table = np.full((n_stop, max_len), _PAD, np.int32)
    lens = np.zeros((n_stop,), np.int32)
    for i, s in enumerate(seqs):
        table[i, max_len - len(s) :] = s
        lens[i] = len(s)
    return StopTable(eos_arr, table, lens)


def _bucket(n: int, minimum: int) -> int:
    size = max(minimum, 1)
    while size < n:
        size *= 2
    return size


def is_eos(tokens: jax.Array, eos_ids: jax.Array) -> jax.Array:
    """``tokens [B]`` -> ``[B]`` bool: token is one of ``eos_ids [E]`` (-1 entries never match)."""
    return jnp.any((tokens[:, None] == eos_ids[None, :]) & (eos_ids[None, :] >= 0), axis=-1)


def match_stop_sequences(
    buffer: jax.Array, num_tokens: jax.Array, stop_seqs: jax.Array, stop_lens: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Does the tail of each row's generated tokens equal a stop sequence?

    Args:
      buffer: ``[B, G]`` int32 tokens generated in the current turn (valid: ``[:num_tokens]``).
      num_tokens: ``[B]`` int32 number of valid tokens in ``buffer``.
      stop_seqs: ``[NS, L]`` right-aligned sequences, -1 = wildcard.
      stop_lens: ``[NS]`` true lengths (0 = unused row).

    Returns:
      ``(matched [B] bool, which [B] int32)``; ``which``: first matching table row, -1 if none.
    """
    length = stop_seqs.shape[1]
    idx = num_tokens[:, None] - length + jnp.arange(length)[None, :]  # [B, L]
    window = jnp.take_along_axis(buffer, jnp.clip(idx, 0, buffer.shape[1] - 1), axis=1)
    window = jnp.where(idx >= 0, window, -2)  # before the turn: matches nothing but a wildcard
    eq = (stop_seqs[None, :, :] == _PAD) | (window[:, None, :] == stop_seqs[None, :, :])  # [B,NS,L]
    hit = (
        jnp.all(eq, axis=-1)
        & (stop_lens[None, :] > 0)
        & (num_tokens[:, None] >= stop_lens[None, :])
    )
    matched = jnp.any(hit, axis=-1)
    which = jnp.where(matched, jnp.argmax(hit, axis=-1), -1).astype(jnp.int32)
    return matched, which
