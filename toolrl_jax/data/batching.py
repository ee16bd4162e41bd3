"""Static-shape batching: length buckets, seeded shuffling, a resumable batch iterator.

XLA compiles one program per input shape, so token arrays are padded to one of a few bucket
lengths (``bucket_for``) and batches keep a fixed row count (``pad_batch(..., batch_size=B)``
adds all-padding rows). ``BatchIterator`` yields lists of example indices:

* epoch ``e`` is a pure function of ``(seed, e)``: a permutation drawn from
  ``numpy.random.default_rng([seed, e])`` (no state carried between epochs);
* with ``lengths`` and ``sort_window = k``, each window of ``k * batch_size`` shuffled examples
  is sorted by bucket then length before being cut into batches, and the batch order is then
  shuffled again, so a batch holds examples of similar length (less padding) while the order
  stays random;
* its position is ``{"epoch", "index"}`` (plus the settings it was made with), a JSON-able dict;
  ``load_state_dict`` restores it and the next batch is the one that would have come next.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np

from toolrl_jax.errors import DataError


def default_buckets(max_length: int, min_length: int = 64) -> tuple[int, ...]:
    """Powers of two from ``min_length`` up to (and always including) ``max_length``."""
    if max_length < 1 or min_length < 1:
        raise ValueError("lengths must be positive")
    out = []
    b = min_length
    while b < max_length:
        out.append(b)
        b *= 2
    out.append(max_length)
    return tuple(out)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``length``. Raises DataError when it exceeds the largest bucket."""
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    raise DataError(
        f"sequence of {length} tokens exceeds the largest bucket ({max(buckets)}); "
        "raise the max length or filter long examples"
    )


def pad_batch(
    sequences: Sequence[Sequence[int]],
    buckets: Sequence[int],
    pad_id: int,
    *,
    batch_size: int | None = None,
    side: str = "right",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads token lists to the bucket of the longest one.

    Args:
      sequences: B lists of token ids.
      buckets: allowed padded lengths.
      pad_id: id written into padding.
      batch_size: if given, add all-padding rows up to this many (fixed leading dimension).
      side: "right" (training: tokens first) or "left" (prompts for generation: tokens last).

    Returns:
      tokens ``[B', L] int32``, mask ``[B', L] bool`` (True on real tokens), lengths ``[B'] int32``
      with ``L = bucket_for(max length)`` and ``B' = batch_size or B``.
    """
    if side not in ("right", "left"):
        raise ValueError("side must be 'right' or 'left'")
    rows = len(sequences) if batch_size is None else batch_size
    if rows < len(sequences):
        raise ValueError(f"{len(sequences)} sequences do not fit batch_size={batch_size}")
    longest = max((len(s) for s in sequences), default=0)
    L = bucket_for(max(longest, 1), buckets)
    tokens = np.full((rows, L), pad_id, dtype=np.int32)
    mask = np.zeros((rows, L), dtype=bool)
    lengths = np.zeros((rows,), dtype=np.int32)
    for i, s in enumerate(sequences):
        n = len(s)
        if side == "right":
            tokens[i, :n] = s
            mask[i, :n] = True
        elif n:
            tokens[i, L - n :] = s
            mask[i, L - n :] = True
        lengths[i] = n
    return tokens, mask, lengths


class BatchIterator:
    """Endless (or ``num_epochs``-long) iterator of index batches with a resumable position.

    Args:
      num_examples: dataset size N.
      batch_size: indices per batch.
      seed: shuffling seed; epoch ``e`` uses ``default_rng([seed, e])``.
      shuffle: False keeps file order (0..N-1) every epoch.
      drop_last: drop the final partial batch of an epoch (keeps shapes static).
      lengths: optional per-example token counts, for length-grouped batches.
      buckets: bucket lengths used to group (default: ``default_buckets(max(lengths))``).
      sort_window: group within windows of ``sort_window * batch_size`` examples (needs lengths).
      num_epochs: stop after this many epochs (None: never stop).
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        lengths: Sequence[int] | None = None,
        buckets: Sequence[int] | None = None,
        sort_window: int | None = None,
        num_epochs: int | None = None,
    ):
        if num_examples < 1:
            raise DataError("cannot batch an empty dataset")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if drop_last and num_examples < batch_size:
            raise DataError(f"dataset of {num_examples} examples is smaller than batch_size={batch_size}")
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError("lengths must have one entry per example")
        if sort_window is not None and lengths is None:
            raise ValueError("sort_window needs lengths")
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        if self.lengths is not None and buckets is None:
            buckets = default_buckets(int(max(self.lengths.max(), 1)))
        self.buckets = None if buckets is None else tuple(int(b) for b in buckets)
        self.sort_window = sort_window
        self.num_epochs = num_epochs
        self.epoch = 0
        self.index = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    # ---- pure schedule --------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch``: a pure function of (settings, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_examples) if self.shuffle else np.arange(self.num_examples)
        if self.sort_window and self.lengths is not None:
            w = self.sort_window * self.batch_size
            keyed = []
            for start in range(0, len(order), w):
                chunk = order[start : start + w]
                lens = self.lengths[chunk]
                bks = np.array([bucket_for(int(x), self.buckets) for x in lens])
                keyed.append(chunk[np.lexsort((lens, bks))])
            order = np.concatenate(keyed)
        n_full = self.batches_per_epoch()
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size].tolist() for i in range(n_full)]
        if self.sort_window and self.shuffle:
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
        return batches

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.epoch_batches(epoch))
        return self._cache[1]

    # ---- iteration ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        while True:
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                raise StopIteration
            batches = self._batches(self.epoch)
            if self.index < len(batches):
                batch = batches[self.index]
                self.index += 1
                return batch
            self.epoch += 1
            self.index = 0

    # ---- position -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: the next batch is batch ``index`` of epoch ``epoch``."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a position saved by :meth:`state_dict` (settings must match)."""
        for key in ("seed", "num_examples", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DataError(
                    f"cannot resume data position: saved {key}={state[key]} but this run has "
                    f"{key}={getattr(self, key)} (same data and batch size are needed to resume)"
                )
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])
