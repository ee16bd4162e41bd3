"""Jitted prefill + decode over a static KV cache, with per-row prompts, positions and stops.

The batch is a fixed set of ``B`` *slots*. Each slot holds one sequence in the KV cache
(``k, v: [L, B, S, KVH, Dh]``, ``pos: [B, S]``) plus a *pending* token: the last sampled token,
whose position is ``cache_index[b]`` and which is not yet in the cache. Two jitted programs move
the state forward, both donating it (the cache is updated in place):

``extend(rows[R], tokens[R, T], lengths[R], reset[R], ...)``
    writes ``lengths[r]`` new tokens into slot ``rows[r]`` at ``cache_index[rows[r]]`` (prefill of a
    fresh prompt when ``reset``, or an observation appended to a running sequence), computes the
    logits at each row's last new token only (``hidden[r, lengths[r] - 1] -> [R, V]``; never
    ``[R, T, V]``), samples the first token of the new turn and checks its stop. Only the ``R``
    touched slots are gathered from the cache, run through the model and scattered back, so
    admitting one prompt costs ``T`` tokens of compute, not ``B * T``. ``R`` and ``T`` are
    bucketed (``R``: powers of four up to ``B``; ``T``: powers of two from 16, beyond 512
    multiples of 512): a run compiles a handful of programs.

``decode(num_steps)``
    a ``lax.while_loop`` of one-token steps over all ``B`` slots until ``num_steps`` steps ran or
    no slot is active. Inactive slots (stopped, waiting for a tool, empty) are fed as padding
    (segment id 0: written with ``pos = -1``, never attended) and do not advance. ``num_steps`` is
    a traced value: the host chooses the chunk length without recompiling, and gets control back
    between chunks to run tools and refill slots.

Per row the sampler keeps the tokens generated in the current *turn* (since the last
``extend``) in a ``[B, G]`` buffer with their ``sample_logprobs`` (log-prob under the processed
distribution actually sampled from, see :mod:`toolrl_jax.rollout.sampling`). A row stops with
reason ``eos`` (newest token in ``eos_ids``), ``stop_sequence`` (tail of the turn equals a stop
sequence, e.g. the ids of ``</tool_call>``) or ``length`` (turn budget ``max_tokens`` reached, or
the sequence, pending token included, reached ``max_total`` tokens).

Randomness: each row's key is ``fold_in(base_key, uid)`` for the trajectory's ``uid`` given at
admission, and its ``n``-th sampled token uses ``fold_in(row_key, n)``. A trajectory's samples
therefore depend on ``(seed, uid)`` only, not on its slot, the batch composition or the chunking.

Model interface (``toolrl_jax.models.decoder.Decoder``): ``hidden(tokens[B,T], positions[B,T], *,
segment_ids, cache, cache_index[B]) -> (hidden[B,T,D], cache)`` and ``logits(hidden) -> [..., V]``
float32; a row's cache holds its sequence contiguously from slot 0 (position == slot).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from toolrl_jax.errors import ConfigError
from toolrl_jax.models.decoder import init_cache as decoder_init_cache
from toolrl_jax.models.sharding import batch_partition_spec, cache_partition_spec, fit_spec
from toolrl_jax.rollout import stops as stops_lib
from toolrl_jax.rollout.sampling import SamplingConfig, sample_from_logits


# ----------------------------------------------------------------------------- buckets
def bucket_length(n: int, *, minimum: int = 16, pow2_until: int = 512) -> int:
    """Smallest bucket >= n: powers of two from ``minimum`` up to ``pow2_until``, then
    multiples of ``pow2_until`` (16, 32, ..., 512, 1024, 1536, 2048, ...)."""
    n = max(int(n), 1)
    size = minimum
    while size < n and size < pow2_until:
        size *= 2
    if size >= n:
        return size
    return -(-n // pow2_until) * pow2_until


def bucket_kv_len(n: int, cache_len: int, *, minimum: int = 128) -> int:
    """Static number of cache slots a decode chunk reads when its rows need ``n`` slots:
    :func:`bucket_length` from ``minimum`` (128, 256, 512, 1024, 1536, ...), capped at
    ``cache_len``. One decode program is compiled per bucket."""
    return min(bucket_length(n, minimum=minimum), int(cache_len))


def _hidden_kwargs(kv_len: int | None) -> dict:
    """``kv_len`` is passed to ``model.hidden`` only when set (models without it still work)."""
    return {} if kv_len is None else {"kv_len": kv_len}


@jax.jit
def _longest_active(cache_index: jax.Array, active: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(active, cache_index, -1))


def _accepts_kv_len(model: Any) -> bool:
    try:
        return "kv_len" in inspect.signature(model.hidden).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def bucket_rows(n: int, batch_size: int) -> int:
    """Smallest power of four >= n (1, 4, 16, 64, ...), capped at ``batch_size``: few programs,
    at most 4x padding rows (whose compute is small next to the decode of the whole batch)."""
    size = 1
    while size < n:
        size *= 4
    return min(size, batch_size)


# ----------------------------------------------------------------------------- state
@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "cache",
        "cache_index",
        "pending",
        "active",
        "stop_reason",
        "stop_which",
        "tokens",
        "logprobs",
        "num_tokens",
        "max_tokens",
        "max_total",
        "row_keys",
        "sample_count",
        "base_key",
    ],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """Device state of the ``B`` slots (a pytree; donated to ``extend`` / ``decode``).

    Attributes:
      cache: the model's KV cache (``k, v: [L, B, S, KVH, Dh]``, ``pos: [B, S]``).
      cache_index: ``[B]`` tokens in the cache = position of the pending token.
      pending: ``[B]`` last sampled token (not yet in the cache).
      active: ``[B]`` bool, the row is decoding.
      stop_reason: ``[B]`` ``stops.RUNNING | EOS | STOP_SEQUENCE | LENGTH``.
      stop_which: ``[B]`` index of the matched stop sequence (-1 if none).
      tokens: ``[B, G]`` ids generated in the current turn (valid ``[:num_tokens]``, else -1).
      logprobs: ``[B, G]`` float32 ``sample_logprobs`` of ``tokens``.
      num_tokens: ``[B]`` tokens generated in the current turn.
      max_tokens: ``[B]`` turn budget (<= G).
      max_total: ``[B]`` limit on the whole sequence length (cache + pending token).
      row_keys: ``[B, 2]`` uint32 per-trajectory PRNG keys.
      sample_count: ``[B]`` tokens sampled so far by the trajectory (PRNG counter).
      base_key: ``[2]`` uint32 key of the run (from the seed).
    """

    cache: Any
    cache_index: jax.Array
    pending: jax.Array
    active: jax.Array
    stop_reason: jax.Array
    stop_which: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    num_tokens: jax.Array
    max_tokens: jax.Array
    max_total: jax.Array
    row_keys: jax.Array
    sample_count: jax.Array
    base_key: jax.Array

    def replace(self, **changes) -> "DecodeState":
        return dataclasses.replace(self, **changes)

    @property
    def batch_size(self) -> int:
        return int(self.cache_index.shape[0])


# ----------------------------------------------------------------------------- cache rows
def _replace(obj: Any, **changes: Any) -> Any:
    if hasattr(obj, "_replace"):  # NamedTuple
        return obj._replace(**changes)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **changes)
    if hasattr(obj, "replace"):  # flax.struct
        return obj.replace(**changes)
    raise TypeError(f"cannot update fields of cache type {type(obj).__name__}")


def cache_take_rows(cache: Any, rows: jax.Array) -> Any:
    """Rows ``rows [R]`` of a cache (``k, v`` batch axis 1, ``pos`` batch axis 0)."""
    return _replace(cache, k=cache.k[:, rows], v=cache.v[:, rows], pos=cache.pos[rows])


def cache_put_rows(cache: Any, rows: jax.Array, sub: Any) -> Any:
    """Scatter ``sub`` (from :func:`cache_take_rows`) back; out-of-range rows are dropped."""
    return _replace(
        cache,
        k=cache.k.at[:, rows].set(sub.k, mode="drop"),
        v=cache.v.at[:, rows].set(sub.v, mode="drop"),
        pos=cache.pos.at[rows].set(sub.pos, mode="drop"),
    )


# ----------------------------------------------------------------------------- stop check
def _check_stops(
    tokens_buf: jax.Array,
    num_tokens: jax.Array,
    new_token: jax.Array,
    total_len: jax.Array,
    max_tokens: jax.Array,
    max_total: jax.Array,
    eos_ids: jax.Array,
    stop_seqs: jax.Array,
    stop_lens: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Stop reason (priority eos > stop_sequence > length) and matched stop index, ``[B]`` each.

    ``tokens_buf``/``num_tokens`` already include ``new_token``; ``total_len`` is the sequence
    length including it.
    """
    eos = stops_lib.is_eos(new_token, eos_ids)
    seq_hit, which = stops_lib.match_stop_sequences(tokens_buf, num_tokens, stop_seqs, stop_lens)
    length = (num_tokens >= max_tokens) | (total_len >= max_total)
    reason = jnp.where(
        eos,
        stops_lib.EOS,
        jnp.where(
            seq_hit, stops_lib.STOP_SEQUENCE, jnp.where(length, stops_lib.LENGTH, stops_lib.RUNNING)
        ),
    ).astype(jnp.int32)
    which = jnp.where(reason == stops_lib.STOP_SEQUENCE, which, -1).astype(jnp.int32)
    return reason, which


def _row_sample_keys(row_keys: jax.Array, counts: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in)(row_keys, counts)


# ----------------------------------------------------------------------------- pure steps
def extend_step(
    model: Any,
    state: DecodeState,
    rows: jax.Array,
    tokens: jax.Array,
    lengths: jax.Array,
    reset: jax.Array,
    uids: jax.Array,
    max_tokens: jax.Array,
    max_total: jax.Array,
    eos_ids: jax.Array,
    stop_seqs: jax.Array,
    stop_lens: jax.Array,
    *,
    sampling: SamplingConfig,
    kv_len: int | None = None,
) -> DecodeState:
    """Append ``tokens [R, T]`` (valid ``[:lengths]``) to slots ``rows [R]`` and sample one token.

    Args:
      model: object with ``hidden`` / ``logits`` (see module docstring).
      state: slots' state.
      rows: ``[R]`` slot indices; ``>= B`` marks a padding row (ignored).
      tokens: ``[R, T]`` new token ids, right-padded.
      lengths: ``[R]`` number of valid new tokens (>= 1 for real rows).
      reset: ``[R]`` bool, start a fresh sequence in the slot (clears its cache, ``cache_index=0``).
      uids: ``[R]`` int32; ``uid >= 0`` starts the row's PRNG stream ``fold_in(base_key, uid)``
        (a new trajectory), ``-1`` continues the row's stream.
      max_tokens: ``[R]`` budget of the new turn (clipped to the buffer size ``G``).
      max_total: ``[R]`` limit on the row's total sequence length.
      eos_ids, stop_seqs, stop_lens: the stop table (:mod:`toolrl_jax.rollout.stops`).
      sampling: static sampling strategy.
      kv_len: static number of cache slots attention reads (``None``: all); the caller
        guarantees ``start + T <= kv_len`` for the real rows (e.g. ``kv_len = T`` when every
        real row is reset).

    Returns:
      the new state; touched rows are active unless the first sampled token already stops them.
    """
    batch = state.batch_size
    buf_len = state.tokens.shape[1]
    r, t = tokens.shape
    safe_rows = jnp.clip(rows, 0, batch - 1)

    sub_cache = cache_take_rows(state.cache, safe_rows)
    sub_cache = _replace(sub_cache, pos=jnp.where(reset[:, None], -1, sub_cache.pos))
    start = jnp.where(reset, 0, state.cache_index[safe_rows])
    positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    segment_ids = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)
    hidden, sub_cache = model.hidden(
        tokens, positions, segment_ids=segment_ids, cache=sub_cache, cache_index=start,
        **_hidden_kwargs(kv_len),
    )
    last = jnp.clip(lengths - 1, 0, t - 1)
    last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [R, D]
    logits = model.logits(last_hidden)  # [R, V] float32

    new_stream = uids >= 0
    row_keys = jnp.where(
        new_stream[:, None],
        jax.vmap(jax.random.fold_in, (None, 0))(state.base_key, jnp.maximum(uids, 0)),
        state.row_keys[safe_rows],
    )
    counts = jnp.where(new_stream, 0, state.sample_count[safe_rows])
    new_token, new_logprob = sample_from_logits(
        _row_sample_keys(row_keys, counts), logits, sampling
    )

    cache_index = start + lengths
    buf = jnp.full((r, buf_len), -1, jnp.int32).at[:, 0].set(new_token)
    lp_buf = jnp.zeros((r, buf_len), jnp.float32).at[:, 0].set(new_logprob)
    ones = jnp.ones((r,), jnp.int32)
    max_tokens = jnp.clip(max_tokens, 1, buf_len)
    reason, which = _check_stops(
        buf, ones, new_token, cache_index + 1, max_tokens, max_total, eos_ids, stop_seqs, stop_lens
    )

    def put(field, values):
        return field.at[rows].set(values.astype(field.dtype), mode="drop")

    return state.replace(
        cache=cache_put_rows(state.cache, rows, sub_cache),
        cache_index=put(state.cache_index, cache_index),
        pending=put(state.pending, new_token),
        active=put(state.active, reason == stops_lib.RUNNING),
        stop_reason=put(state.stop_reason, reason),
        stop_which=put(state.stop_which, which),
        tokens=put(state.tokens, buf),
        logprobs=put(state.logprobs, lp_buf),
        num_tokens=put(state.num_tokens, ones),
        max_tokens=put(state.max_tokens, max_tokens),
        max_total=put(state.max_total, max_total),
        row_keys=put(state.row_keys, row_keys),
        sample_count=put(state.sample_count, counts + 1),
    )


def copy_rows_step(state: DecodeState, src: jax.Array, dst: jax.Array) -> DecodeState:
    """Copy the cached sequence (k, v, pos, cache_index) of slots ``src [R]`` into ``dst [R]``
    (``dst >= B``: padding, ignored). Used to share one prefill among the samples of a prompt;
    the copies are then extended with their own last token and PRNG stream."""
    batch = state.batch_size
    src = jnp.clip(src, 0, batch - 1)
    sub = cache_take_rows(state.cache, src)
    return state.replace(
        cache=cache_put_rows(state.cache, dst, sub),
        cache_index=state.cache_index.at[dst].set(state.cache_index[src], mode="drop"),
        active=state.active.at[dst].set(False, mode="drop"),
    )


def decode_step(
    model: Any,
    state: DecodeState,
    eos_ids: jax.Array,
    stop_seqs: jax.Array,
    stop_lens: jax.Array,
    *,
    sampling: SamplingConfig,
    kv_len: int | None = None,
) -> DecodeState:
    """One token for every active slot: feed the pending token, sample the next, check stops.

    ``kv_len`` (static): attention reads cache slots ``[:kv_len]`` only; the caller guarantees
    ``cache_index < kv_len`` for every active row (:meth:`Sampler.decode` picks the bucket)."""
    active = state.active
    batch, buf_len = state.tokens.shape
    hidden, cache = model.hidden(
        state.pending[:, None],
        state.cache_index[:, None],
        segment_ids=active[:, None].astype(jnp.int32),
        cache=state.cache,
        cache_index=state.cache_index,
        **_hidden_kwargs(kv_len),
    )
    logits = model.logits(hidden[:, 0])  # [B, V]
    new_token, new_logprob = sample_from_logits(
        _row_sample_keys(state.row_keys, state.sample_count), logits, sampling
    )
    step = active.astype(jnp.int32)
    cache_index = state.cache_index + step
    write_at = jnp.where(active, state.num_tokens, buf_len)  # buf_len: dropped
    arange = jnp.arange(batch)
    tokens_buf = state.tokens.at[arange, write_at].set(new_token, mode="drop")
    lp_buf = state.logprobs.at[arange, write_at].set(new_logprob, mode="drop")
    num_tokens = state.num_tokens + step
    reason, which = _check_stops(
        tokens_buf,
        num_tokens,
        new_token,
        cache_index + 1,
        state.max_tokens,
        state.max_total,
        eos_ids,
        stop_seqs,
        stop_lens,
    )
    return state.replace(
        cache=cache,
        cache_index=cache_index,
        pending=jnp.where(active, new_token, state.pending),
        active=active & (reason == stops_lib.RUNNING),
        stop_reason=jnp.where(active, reason, state.stop_reason),
        stop_which=jnp.where(active, which, state.stop_which),
        tokens=tokens_buf,
        logprobs=lp_buf,
        num_tokens=num_tokens,
        sample_count=state.sample_count + step,
    )


def decode_loop(
    model: Any,
    state: DecodeState,
    num_steps: jax.Array,
    eos_ids: jax.Array,
    stop_seqs: jax.Array,
    stop_lens: jax.Array,
    *,
    sampling: SamplingConfig,
    kv_len: int | None = None,
) -> tuple[DecodeState, jax.Array, jax.Array]:
    """``decode_step`` in a ``lax.while_loop`` while ``step < num_steps and any(active)``.

    Returns:
      ``(state, steps_run, active_row_steps)``; the last two are int32 scalars (slot use).
    """

    def cond(carry):
        step, _, st = carry
        return (step < num_steps) & jnp.any(st.active)

    def body(carry):
        step, busy, st = carry
        busy = busy + jnp.sum(st.active.astype(jnp.int32))
        return (
            step + 1,
            busy,
            decode_step(
                model, st, eos_ids, stop_seqs, stop_lens, sampling=sampling, kv_len=kv_len
            ),
        )

    steps, busy, state = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.int32(0), state))
    return state, steps, busy


# ----------------------------------------------------------------------------- host wrapper
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Result of :meth:`Sampler.generate` (numpy, one row per prompt).

    Attributes:
      completion_ids: list of ``[n_i]`` int32 arrays (stop tokens included, nothing after).
      sample_logprobs: list of ``[n_i]`` float32 arrays.
      stop_reasons: list of names: 'eos' | 'stop_sequence' | 'length'.
      stop_which: ``[N]`` index of the matched stop sequence, -1 if none.
    """

    completion_ids: list[np.ndarray]
    sample_logprobs: list[np.ndarray]
    stop_reasons: list[str]
    stop_which: np.ndarray


class Sampler:
    """Owns the jitted ``extend`` / ``decode`` programs for one model and batch geometry.

    Args:
      model: a ``Decoder`` (Flax NNX module) or any NNX module with ``hidden`` / ``logits``.
      batch_size: number of slots ``B``.
      cache_len: KV cache length ``S`` per slot. Each ``extend`` requires
        ``cache_index + bucketed chunk length <= S`` for the touched rows.
      turn_len: ``G``, most tokens one turn can generate (buffer width).
      sampling: :class:`SamplingConfig`.
      eos_ids: token ids that end a sequence.
      stop_sequences: token-id sequences that end a turn (e.g. ``</tool_call>``).
      init_cache: ``f(batch, max_len) -> cache``; default the decoder's
        ``init_cache(model.config, batch, max_len)``.
      min_bucket: smallest prefill length bucket.
      jit_wrapper: applied to the pure step functions before ``jax.jit`` (tests pass
        ``chex.assert_max_traces(n=...)`` to prove a program compiles once per bucket).
      kv_min_bucket: smallest KV-length bucket: a decode chunk's attention reads only the first
        :func:`bucket_kv_len` slots (a bucket >= the longest live row), one compiled decode
        program per bucket. ``None`` (or a model whose ``hidden`` has no ``kv_len``) reads the
        whole cache every step.
      mesh: optional ``jax.sharding.Mesh`` (axes data/fsdp/tp) the model's parameters live on;
        the slots are split over ``('data', 'fsdp')`` and the KV heads over ``tp``
        (``models.sharding.cache_partition_spec``, with its divisibility fallback), and the
        jitted programs keep the state on those shardings.
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int,
        cache_len: int,
        turn_len: int,
        sampling: SamplingConfig = SamplingConfig(),
        eos_ids: Sequence[int] = (),
        stop_sequences: Sequence[Sequence[int]] = (),
        init_cache: Callable[[int, int], Any] | None = None,
        min_bucket: int = 16,
        jit_wrapper: Callable[[Callable], Callable] | None = None,
        mesh: Any = None,
        kv_min_bucket: int | None = 128,
    ):
        if batch_size < 1 or cache_len < 2 or turn_len < 1:
            raise ConfigError(
                f"sampler needs batch_size >= 1, cache_len >= 2, turn_len >= 1; got "
                f"{batch_size}, {cache_len}, {turn_len}"
            )
        self.batch_size = int(batch_size)
        self.cache_len = int(cache_len)
        self.turn_len = int(turn_len)
        self.sampling = sampling
        self.min_bucket = int(min_bucket)
        self.kv_min_bucket = (
            int(kv_min_bucket) if kv_min_bucket is not None and _accepts_kv_len(model) else None
        )
        self.stop_table = stops_lib.make_stop_table(eos_ids, stop_sequences)
        self._stop_arrays = self.stop_table.arrays()
        self.graphdef, self.params = nnx.split(model)
        self.config = getattr(model, "config", None)
        if init_cache is None:
            config = self.config

            def init_cache(batch, max_len):
                return decoder_init_cache(config, batch, max_len)

        self._init_cache = init_cache
        self.mesh = mesh
        self._state_shardings = None
        wrap = jit_wrapper or (lambda f: f)
        graphdef = self.graphdef

        def _extend(
            params,
            state,
            rows,
            tokens,
            lengths,
            reset,
            uids,
            max_tokens,
            max_total,
            eos_ids,
            stop_seqs,
            stop_lens,
            kv_len,
        ):
            model = nnx.merge(graphdef, params)
            return extend_step(
                model,
                state,
                rows,
                tokens,
                lengths,
                reset,
                uids,
                max_tokens,
                max_total,
                eos_ids,
                stop_seqs,
                stop_lens,
                sampling=sampling,
                kv_len=kv_len,
            )

        def _decode(params, state, num_steps, eos_ids, stop_seqs, stop_lens, kv_len):
            model = nnx.merge(graphdef, params)
            return decode_loop(
                model, state, num_steps, eos_ids, stop_seqs, stop_lens, sampling=sampling,
                kv_len=kv_len,
            )

        self._extend_fn, self._decode_fn = wrap(_extend), wrap(_decode)
        self._extend = jax.jit(self._extend_fn, donate_argnums=(1,), static_argnums=(12,))
        self._decode = jax.jit(self._decode_fn, donate_argnums=(1,), static_argnums=(6,))
        self._copy_rows = jax.jit(copy_rows_step, donate_argnums=(0,))

    # ------------------------------------------------------------------ params
    def set_stops(
        self, eos_ids: Sequence[int] = (), stop_sequences: Sequence[Sequence[int]] = ()
    ) -> None:
        """Replace the stop table (no recompilation while it fits the padded table shapes)."""
        self.stop_table = stops_lib.make_stop_table(eos_ids, stop_sequences)
        self._stop_arrays = self.stop_table.arrays()

    def set_params(self, params: Any) -> None:
        """Swap in new weights (an ``nnx.State`` of the same structure), e.g. after a train step."""
        self.params = params

    # ------------------------------------------------------------------ state
    def init_state(self, seed: int = 0) -> DecodeState:
        """Empty slots (all inactive) with a fresh cache (sharded over the mesh when given)."""
        b, g = self.batch_size, self.turn_len
        cache = self._init_cache(b, self.cache_len)
        state = DecodeState(
            cache=cache,
            cache_index=jnp.zeros((b,), jnp.int32),
            pending=jnp.zeros((b,), jnp.int32),
            active=jnp.zeros((b,), bool),
            stop_reason=jnp.zeros((b,), jnp.int32),
            stop_which=jnp.full((b,), -1, jnp.int32),
            tokens=jnp.full((b, g), -1, jnp.int32),
            logprobs=jnp.zeros((b, g), jnp.float32),
            num_tokens=jnp.zeros((b,), jnp.int32),
            max_tokens=jnp.full((b,), g, jnp.int32),
            max_total=jnp.full((b,), self.cache_len, jnp.int32),
            row_keys=jnp.zeros((b, 2), jnp.uint32),
            sample_count=jnp.zeros((b,), jnp.int32),
            base_key=jax.random.PRNGKey(seed),
        )
        if self.mesh is None:
            return state
        if self._state_shardings is None:
            self._state_shardings = self._shardings_of(state)
            out = (self._state_shardings,)
            self._extend = jax.jit(
                self._extend_fn, donate_argnums=(1,), static_argnums=(12,), out_shardings=out[0]
            )
            self._decode = jax.jit(
                self._decode_fn, donate_argnums=(1,), static_argnums=(6,),
                out_shardings=(out[0], None, None),
            )
            self._copy_rows = jax.jit(copy_rows_step, donate_argnums=(0,), out_shardings=out[0])
        return jax.device_put(state, self._state_shardings)

    def _shardings_of(self, state: DecodeState) -> DecodeState:
        """NamedShardings: cache k/v by ``cache_partition_spec``, batch-major arrays by
        ``batch_partition_spec`` (both fitted to the shapes), the run key replicated."""
        mesh = self.mesh

        def batch_major(x):
            return NamedSharding(mesh, fit_spec(batch_partition_spec(), x.shape, mesh))

        cache = state.cache
        cache_sh = _replace(
            jax.tree.map(batch_major, cache),
            k=NamedSharding(mesh, fit_spec(cache_partition_spec(), cache.k.shape, mesh)),
            v=NamedSharding(mesh, fit_spec(cache_partition_spec(), cache.v.shape, mesh)),
        )
        sh = jax.tree.map(batch_major, state.replace(cache=cache.pos))
        return sh.replace(cache=cache_sh, base_key=NamedSharding(mesh, PartitionSpec()))

    def extend(
        self,
        state: DecodeState,
        rows: Sequence[int],
        chunks: Sequence[Sequence[int]],
        *,
        reset: Sequence[bool] | bool,
        uids: Sequence[int] | None = None,
        max_tokens: Sequence[int] | int | None = None,
        max_total: Sequence[int] | int | None = None,
    ) -> DecodeState:
        """Host wrapper of :func:`extend_step`: pads rows and lengths to their buckets.

        ``chunks[i]`` is appended to slot ``rows[i]`` (distinct rows); ``state`` is donated (do
        not reuse it). For a continued row (``reset`` False) the caller guarantees
        ``cache_index + bucket_length(len(chunk)) <= cache_len`` (the decoder's cache write
        clamps at the end of the cache; the engine checks this before every observation).
        Raises ``ConfigError`` if a chunk is empty or its bucket exceeds the cache.
        """
        n = len(rows)
        if n == 0:
            return state
        if len(chunks) != n:
            raise ConfigError("extend: rows and chunks differ in length")
        lengths = np.array([len(c) for c in chunks], np.int32)
        if lengths.min() < 1:
            raise ConfigError("extend: every chunk needs at least one token")
        t = bucket_length(int(lengths.max()), minimum=self.min_bucket)
        if t > self.cache_len:
            raise ConfigError(
                f"extend: chunk of {int(lengths.max())} tokens (bucket {t}) exceeds the cache "
                f"length {self.cache_len}; raise cache_len / max_total_len"
            )
        r = bucket_rows(n, self.batch_size)
        pad = r - n
        tok = np.zeros((r, t), np.int32)
        for i, c in enumerate(chunks):
            tok[i, : len(c)] = c

        def col(values, default, dtype):
            """``[R]`` column: the given values (or the default) for real rows, default for pads."""
            arr = np.broadcast_to(np.asarray(default if values is None else values, dtype), (n,))
            return np.concatenate([arr, np.full((pad,), default, dtype)])

        rows_arr = np.concatenate(
            [np.asarray(rows, np.int32), np.full((pad,), self.batch_size, np.int32)]
        )
        lengths = np.concatenate([lengths, np.zeros((pad,), np.int32)])
        all_reset = bool(np.all(np.broadcast_to(np.asarray(reset, bool), (n,))))
        kv_len = t if self.kv_min_bucket is not None and all_reset else None
        return self._extend(
            self.params,
            state,
            rows_arr,
            tok,
            lengths,
            col(reset, False, bool),
            col(uids, -1, np.int32),
            col(max_tokens, self.turn_len, np.int32),
            col(max_total, self.cache_len, np.int32),
            *self._stop_arrays,
            kv_len,
        )

    def copy_rows(self, state: DecodeState, src: Sequence[int], dst: Sequence[int]) -> DecodeState:
        """Copy slots ``src[i] -> dst[i]`` (cache and length; ``state`` is donated). The copies
        are inactive until an ``extend`` gives them a token to continue from."""
        n = len(src)
        if n == 0:
            return state
        r = bucket_rows(n, self.batch_size)
        pad = np.full((r - n,), self.batch_size, np.int32)
        return self._copy_rows(
            state,
            np.concatenate([np.asarray(src, np.int32), np.zeros((r - n,), np.int32)]),
            np.concatenate([np.asarray(dst, np.int32), pad]),
        )

    def decode(self, state: DecodeState, num_steps: int) -> tuple[DecodeState, int, int]:
        """Run up to ``num_steps`` decode steps (fewer when every slot stops). ``state`` is
        donated. Returns ``(state, steps_run, active_row_steps)`` (python ints).

        With KV buckets the steps run in sub-chunks, each a device-side ``while_loop`` whose
        attention reads the :func:`bucket_kv_len` slots that hold the longest active row until
        the chunk's end; the host reads the longest active row's length once and the step
        count at each bucket boundary (a handful per call, not one per token).
        """
        if self.kv_min_bucket is None:
            state, steps, busy = self._decode(
                self.params, state, np.int32(num_steps), *self._stop_arrays, None
            )
            return state, int(steps), int(busy)
        # slot the next token of the longest active row goes to (-1: none); a replicated
        # scalar, so this also works when the slots are sharded over several hosts
        longest = int(_longest_active(state.cache_index, state.active))
        if num_steps < 1 or longest < 0:
            return state, 0, 0
        total_steps = total_busy = 0
        remaining = int(num_steps)
        while remaining > 0:
            kv_len = bucket_kv_len(longest + 1, self.cache_len, minimum=self.kv_min_bucket)
            chunk = remaining if kv_len <= longest else min(remaining, kv_len - longest)
            if kv_len <= longest:
                kv_len = self.cache_len
            state, steps, busy = self._decode(
                self.params, state, np.int32(chunk), *self._stop_arrays, kv_len
            )
            steps, busy = int(steps), int(busy)
            total_steps, total_busy = total_steps + steps, total_busy + busy
            remaining -= chunk
            if steps < chunk:  # every row stopped
                break
            longest += steps
        return state, total_steps, total_busy

    # ------------------------------------------------------------------ one-shot
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        seed: int = 0,
        uids: Sequence[int] | None = None,
    ) -> SampleOutput:
        """Sample one completion per prompt, ``batch_size`` prompts at a time (no refill).

        Completion ``i`` uses the PRNG stream of ``uids[i]`` (default ``i``).
        """
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        uids = list(range(len(prompts))) if uids is None else list(uids)
        out_ids: list[np.ndarray] = []
        out_lp: list[np.ndarray] = []
        reasons: list[str] = []
        which: list[int] = []
        budget = min(max_new_tokens, self.turn_len)
        state = self.init_state(seed)
        for lo in range(0, len(prompts), self.batch_size):
            batch = [list(p) for p in prompts[lo : lo + self.batch_size]]
            longest = max(len(p) for p in batch)
            if longest + 1 > self.cache_len:
                raise ConfigError(
                    f"prompt of {longest} tokens does not fit cache_len={self.cache_len}"
                )
            state = self.extend(
                state,
                list(range(len(batch))),
                batch,
                reset=True,
                uids=uids[lo : lo + len(batch)],
                max_tokens=budget,
                max_total=self.cache_len,
            )
            state, _, _ = self.decode(state, budget)
            num, toks, lps, why, wh = jax.device_get(
                (
                    state.num_tokens,
                    state.tokens,
                    state.logprobs,
                    state.stop_reason,
                    state.stop_which,
                )
            )
            for i in range(len(batch)):
                out_ids.append(np.asarray(toks[i, : num[i]], np.int32))
                out_lp.append(np.asarray(lps[i, : num[i]], np.float32))
                reasons.append(stops_lib.STOP_REASON_NAMES[int(why[i])])
                which.append(int(wh[i]))
        return SampleOutput(out_ids, out_lp, reasons, np.asarray(which, np.int32))
