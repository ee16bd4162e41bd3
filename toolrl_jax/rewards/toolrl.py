"""ToolRL's fine-grained tool-call reward as a jitted pure function (Qian et al., arXiv 2504.13958).

``toolrl_reward(batch, step, config) -> ToolRLReward(total, format, correctness, length)``, each
``[B]`` float32, where ``batch`` is a :class:`~toolrl_jax.rewards.encode.ToolCallBatch` from
:func:`~toolrl_jax.rewards.encode.encode_batch`, ``step`` an integer and ``config`` a
:class:`~toolrl_jax.rewards.config.ToolRLRewardConfig`.

R = R_format + R_correct (+ R_length):

* R_format = f_hi if the format regex matched else f_lo (default [0, 1]).
* R_correct, ground truth G (calls g with keys K_g), prediction P:
    - no ``<tool_call>`` in the ground truth: 0 ('zero', released) or hi/lo by whether P has no
      ``<tool_call>`` / ``</tool_call>`` tag ('no_call');
    - P unparsable (or too many calls for the static shape): lo;
    - P == G as ordered lists of calls: hi;
    - else score = r_name + sum over matched pairs (g, p) of [J(K_g, K_p) + #{k in K_g: p[k] == g[k]}]
      with r_name the multiset Jaccard of the name lists and J the key Jaccard; pairs need equal
      names; the matching is greedy in ground-truth order (released: first unused candidate with
      the largest score > 0) or maximises the total (paper; exact bitmask DP over the predicted
      calls when max_calls <= 10, else the better of two greedy passes, ground-truth order and
      best-pair-first); S_max = 1 + sum_g (1 + |K_g|); R_correct = (hi - lo) * score / S_max + lo.
* R_length = round(words(think) / L, 2) capped at 1, scaled to the length range.

Variants: coarse (hi iff exact else lo), intermediate (pair score 1 iff the whole call is equal;
S_max = 1 + |G|), finegrained (Jaccards -> ordered list equality), equal_max (correctness range
(-f_hi, f_hi)), two_stage (step < 30: correctness range / 3; later: format range / 2),
dynamic_code (released SCHEDULEREWARD, s = step / 150): f_hi = max(2 - (2 - f_hi) s, 1),
f_lo = min(-2 + (2 + f_lo) s, -1), c_hi = min((c_hi - 2) s + 2, 3), c_lo = max((c_lo + 2) s - 2, -3);
dynamic (paper form: same with s = p = min(step / total_steps, 1)); length (L = 512);
dynamic_length (L = (640 - 384) step / 105 + 384).

Compilation: only the shapes and ``config.matching`` are static. The variant, ranges, schedules
and ``step`` enter the compiled program as traced scalars (:func:`reward_params`), so switching
variant or step never recompiles.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import multiprocessing
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toolrl_jax.errors import DataError
from toolrl_jax.rewards.config import MAX_EXACT_OPTIMAL_CALLS, ToolRLRewardConfig
from toolrl_jax.rewards.encode import ToolCallBatch, encode_batch

__all__ = [
    "RewardParams",
    "ToolRLReward",
    "length_tie_table",
    "reward_params",
    "reward_ranges",
    "score_texts",
    "toolrl_reward",
    "toolrl_reward_core",
]

_NEG = -1e9
_KEY_MUL = 1 << 20
_NO_KEY = np.iinfo(np.int32).max
_TABLE_MIN = 256


class ToolRLReward(NamedTuple):
    """Per-sample reward components, each ``[B]`` float32; ``total = format + correctness + length``."""

    total: jax.Array
    format: jax.Array
    correctness: jax.Array
    length: jax.Array


class RewardParams(NamedTuple):
    """The numeric (traced) part of a :class:`ToolRLRewardConfig`: scalars + the tie table."""

    f_lo: jax.Array
    f_hi: jax.Array
    c_lo: jax.Array
    c_hi: jax.Array
    l_lo: jax.Array
    l_hi: jax.Array
    coarse: jax.Array
    intermediate: jax.Array
    finegrained: jax.Array
    response_zero: jax.Array
    range_mode: jax.Array  # 0 fixed, 1 two_stage, 2 dynamic (paper, clipped p), 3 dynamic_code
    two_stage_step: jax.Array
    dyn_steps: jax.Array
    use_length: jax.Array
    length_fixed: jax.Array
    length_words: jax.Array
    sched_start: jax.Array
    sched_end: jax.Array
    sched_steps: jax.Array
    sched_step_max: jax.Array
    tie_steps: jax.Array
    tie_keys: jax.Array  # [K] int32, sorted, padded with int32 max
    tie_deltas: jax.Array  # [K] int32


# ----------------------------------------------------------------------------- length ties
def _half_even_div(num: int, den: int) -> int:
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


def _length_step_max(schedule: tuple[int, int, int]) -> int:
    start, end, steps = schedule
    if end > start:
        return max(0, (2**31 // 100 - 2 * steps - start * steps) // (end - start))
    if end < start:
        return max(0, (start * steps - steps) // (start - end))
    return 2**30


@functools.lru_cache(maxsize=32)
def length_tie_table(variant: str, length_words: int, schedule: tuple[int, int, int],
                     tie_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and cent corrections where Python's float64 ``round(words / L, 2)`` differs from
    rounding the exact ratio half-to-even.

    Those are exact half-cent ties (e.g. step 30: L = 457.142857..., 48 words -> 0.105) that the
    released code resolves through float64 representation error; found with exact integer
    arithmetic, corrected bit-for-bit. Keys: ``words`` for 'length' (L is constant) and
    ``step * 2**20 + words`` for 'dynamic_length'. Sorted, padded with int32 max to a power of
    two >= 256 (so the table's shape, and the compiled program, rarely change). Memoised (pure).
    """
    keys: list[int] = []
    deltas: list[int] = []
    odd = np.arange(1, 200, 2, dtype=np.int64)  # 2k + 1, k = 0..99 (ties up to a ratio of 1)
    if variant == "length":
        L = length_words
        for m in odd.tolist():
            if (L * m) % 200 == 0:
                n = L * m // 200
                py = round(min(round(n / L, 2), 1.0) * 100)
                he = min(_half_even_div(100 * n, L), 100)
                if py != he:
                    keys.append(n)
                    deltas.append(py - he)
    elif variant == "dynamic_length":
        start, end, steps = schedule
        S = min(tie_steps, _length_step_max(schedule) + 1)
        s = np.arange(S, dtype=np.int64)
        d = start * steps + (end - start) * s  # L = d / steps
        num = d[:, None] * odd[None, :]
        hit_s, hit_k = np.nonzero(num % (200 * steps) == 0)
        for si, ki in zip(hit_s.tolist(), hit_k.tolist()):
            n = int(num[si, ki] // (200 * steps))
            if n >= _KEY_MUL:
                continue
            L64 = (end - start) * si / steps + start  # the released expression, in float64
            py = round(min(round(n / L64, 2), 1.0) * 100)
            he = min(_half_even_div(100 * n * steps, int(d[si])), 100)
            if py != he:
                keys.append(si * _KEY_MUL + n)
                deltas.append(py - he)
    size = _TABLE_MIN
    while size < len(keys):
        size *= 2
    order = np.argsort(np.asarray(keys, np.int64), kind="stable")
    k = np.full(size, _NO_KEY, np.int32)
    v = np.zeros(size, np.int32)
    k[: len(keys)] = np.asarray(keys, np.int64)[order]
    v[: len(keys)] = np.asarray(deltas, np.int64)[order]
    k.setflags(write=False)
    v.setflags(write=False)
    return k, v


def reward_params(config: ToolRLRewardConfig) -> RewardParams:
    """Traced scalars (and the length tie table) describing ``config``'s variant and ranges."""
    v = config.variant
    f_lo, f_hi = config.format_range
    c_lo, c_hi = config.correctness_range
    if v == "equal_max":
        c_lo, c_hi = -f_hi, f_hi
    mode = {"two_stage": 1, "dynamic": 2, "dynamic_code": 3}.get(v, 0)
    keys, deltas = length_tie_table(v, config.length_words, config.length_schedule, config.length_tie_steps)
    f32, i32 = np.float32, np.int32
    return RewardParams(
        f_lo=f32(f_lo), f_hi=f32(f_hi), c_lo=f32(c_lo), c_hi=f32(c_hi),
        l_lo=f32(config.length_range[0]), l_hi=f32(config.length_range[1]),
        coarse=np.bool_(v == "coarse"), intermediate=np.bool_(v == "intermediate"),
        finegrained=np.bool_(v == "finegrained"), response_zero=np.bool_(config.response_only == "zero"),
        range_mode=i32(mode), two_stage_step=i32(config.two_stage_step),
        dyn_steps=i32(config.dynamic_code_steps if v == "dynamic_code" else config.total_steps),
        use_length=np.bool_(config.uses_length), length_fixed=np.bool_(v == "length"),
        length_words=i32(config.length_words), sched_start=i32(config.length_schedule[0]),
        sched_end=i32(config.length_schedule[1]), sched_steps=i32(config.length_schedule[2]),
        sched_step_max=i32(min(_length_step_max(config.length_schedule), 2**30)),
        tie_steps=i32(config.length_tie_steps), tie_keys=keys, tie_deltas=deltas,
    )


# ----------------------------------------------------------------------------- ranges
def _ranges(step, p: RewardParams):
    step = jnp.asarray(step).astype(jnp.float32)
    f_lo, f_hi, c_lo, c_hi = p.f_lo, p.f_hi, p.c_lo, p.c_hi
    early = step < p.two_stage_step
    ts = (jnp.where(early, f_lo, f_lo / 2), jnp.where(early, f_hi, f_hi / 2),
          jnp.where(early, c_lo / 3, c_lo), jnp.where(early, c_hi / 3, c_hi))
    s = step / p.dyn_steps.astype(jnp.float32)
    s = jnp.where(p.range_mode == 2, jnp.clip(s, 0.0, 1.0), s)
    dyn = (jnp.minimum(-2.0 + (2.0 + f_lo) * s, -1.0), jnp.maximum(2.0 - (2.0 - f_hi) * s, 1.0),
           jnp.maximum((c_lo + 2.0) * s - 2.0, -3.0), jnp.minimum((c_hi - 2.0) * s + 2.0, 3.0))
    fixed = (f_lo, f_hi, c_lo, c_hi)
    return tuple(jnp.where(p.range_mode == 1, t, jnp.where(p.range_mode >= 2, d, f))
                 for f, t, d in zip(fixed, ts, dyn))


def reward_ranges(step, config: ToolRLRewardConfig):
    """(f_lo, f_hi, c_lo, c_hi) float32 scalars at ``step`` for the configured variant."""
    return _ranges(step, reward_params(config))


def _length_cents(words, step, p: RewardParams):
    """round(words / L(step), 2) * 100, capped at 100, exactly as the released float64 code."""
    words = jnp.maximum(words.astype(jnp.int32), 0)
    step_i = jnp.clip(jnp.asarray(step).astype(jnp.int32), 0, p.sched_step_max)
    # fixed L
    n_f = jnp.minimum(words, p.length_words + 1)
    num_f, den_f = 100 * n_f, p.length_words
    # scheduled L = den / steps
    den_s = p.sched_start * p.sched_steps + (p.sched_end - p.sched_start) * step_i
    n_s = jnp.minimum(words, den_s // p.sched_steps + 1)
    num_s = 100 * n_s * p.sched_steps
    num = jnp.where(p.length_fixed, num_f, num_s)
    den = jnp.where(p.length_fixed, den_f, den_s)
    key = jnp.where(p.length_fixed, n_f, jnp.where(step_i < p.tie_steps, step_i * _KEY_MUL + n_s, -1))
    q, r = num // den, num % den
    q = q + ((2 * r > den) | ((2 * r == den) & (q % 2 == 1))).astype(jnp.int32)
    idx = jnp.clip(jnp.searchsorted(p.tie_keys, key), 0, p.tie_keys.shape[0] - 1)
    q = q + jnp.where(p.tie_keys[idx] == key, p.tie_deltas[idx], 0)
    return jnp.minimum(q, 100)


# ----------------------------------------------------------------------------- matching
def _greedy_in_order(cand, weight):
    """Released matching: for g in order take the first unused candidate with the largest
    strictly positive weight (with weight = whole-call equality this is INTERMEDIATEREWARD's
    "first unused equal call")."""
    C_g, C_p = cand.shape

    def body(used, g):
        sc = jnp.where(cand[g] & ~used, weight[g], -1.0)
        idx = jnp.argmax(sc)
        s = sc[idx]
        take = s > 0
        used = used | (take & (jnp.arange(C_p) == idx))
        return used, jnp.where(take, s, 0.0)

    _, gains = jax.lax.scan(body, jnp.zeros(C_p, bool), jnp.arange(C_g))
    return jnp.sum(gains)


def _greedy_best_first(w):
    """Repeatedly take the globally best remaining pair with positive weight."""
    C_g, C_p = w.shape

    def body(_, carry):
        rows, cols, total = carry
        m = jnp.where(rows[:, None] & cols[None, :], w, -1.0)
        flat = jnp.argmax(m)
        g, p = flat // C_p, flat % C_p
        s = m[g, p]
        take = s > 0
        rows = rows & ~(take & (jnp.arange(C_g) == g))
        cols = cols & ~(take & (jnp.arange(C_p) == p))
        return rows, cols, total + jnp.where(take, s, 0.0)

    _, _, total = jax.lax.fori_loop(0, min(C_g, C_p), body,
                                    (jnp.ones(C_g, bool), jnp.ones(C_p, bool), jnp.float32(0)))
    return total


def _optimal_dp(w):
    """Maximum-weight matching of rows to columns (weights >= 0), exact.

    dp[mask] = best total with exactly the predicted calls in ``mask`` used; each ground-truth
    row stays unmatched or takes one unused column. O(C_g * C_p * 2**C_p) per sample.
    """
    C_g, C_p = w.shape
    masks = np.arange(1 << C_p)
    dp0 = jnp.where(jnp.asarray(masks == 0), 0.0, _NEG).astype(jnp.float32)
    has = [jnp.asarray((masks >> j) & 1 == 1) for j in range(C_p)]
    src = [jnp.asarray(masks ^ (1 << j)) for j in range(C_p)]

    def body(dp, g):
        new = dp
        for j in range(C_p):
            new = jnp.maximum(new, jnp.where(has[j], dp[src[j]] + w[g, j], _NEG))
        return new, None

    dp, _ = jax.lax.scan(body, dp0, jnp.arange(C_g))
    return jnp.max(dp)


# ----------------------------------------------------------------------------- one sample
def _score_sample(x: ToolCallBatch, step, p: RewardParams, matching: str):
    f_lo, f_hi, c_lo, c_hi = _ranges(step, p)

    gv, pv = x.gt_call_valid, x.pd_call_valid
    n_g, n_p = jnp.sum(gv), jnp.sum(pv)
    same_slots = jnp.all(gv == pv)
    exact = x.pd_ok & ~x.pd_overflow & same_slots & jnp.all(jnp.where(gv, x.gt_call == x.pd_call, True))
    names_equal = same_slots & jnp.all(jnp.where(gv, x.gt_name == x.pd_name, True))

    name_eq = gv[:, None] & pv[None, :] & (x.gt_name[:, None] == x.pd_name[None, :])  # [Cg, Cp]
    whole_eq = name_eq & (x.gt_call[:, None] == x.pd_call[None, :])

    # r_name: multiset Jaccard of the name lists (finegrained: ordered list equality)
    gg = gv[:, None] & gv[None, :] & (x.gt_name[:, None] == x.gt_name[None, :])
    rank = jnp.sum(jnp.tril(gg, k=-1), axis=1)  # earlier ground-truth calls with the same name
    inter = jnp.sum(gv & (rank < jnp.sum(name_eq, axis=1)))
    union = n_g + n_p - inter
    jac = jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0).astype(jnp.float32)
    r_jac = jnp.where(names_equal, 1.0, jnp.where((n_g == 0) | (n_p == 0), 0.0, jac))
    r_name = jnp.where(p.finegrained, names_equal.astype(jnp.float32), r_jac)

    # pair scores [Cg, Cp]
    ga, pa = x.gt_arg_valid, x.pd_arg_valid  # [C, A]
    key_eq = (ga[:, None, :, None] & pa[None, :, None, :]
              & (x.gt_key[:, None, :, None] == x.pd_key[None, :, None, :]))  # [Cg, Cp, A, A]
    val_eq = key_eq & (x.gt_val[:, None, :, None] == x.pd_val[None, :, None, :])
    correct = jnp.sum(jnp.any(val_eq, axis=3), axis=2).astype(jnp.float32)
    nk_g, nk_p = jnp.sum(ga, axis=1), jnp.sum(pa, axis=1)
    ordered = jnp.all(jnp.where(ga[:, None, :], x.gt_key[:, None, :] == x.pd_key[None, :, :], True), axis=2)
    fine = ((nk_g[:, None] == nk_p[None, :]) & ordered).astype(jnp.float32)
    inter_k = jnp.sum(jnp.any(key_eq, axis=3), axis=2)
    union_k = nk_g[:, None] + nk_p[None, :] - inter_k
    jac_k = jnp.where(union_k > 0, inter_k / jnp.maximum(union_k, 1), 1.0).astype(jnp.float32)
    param = jnp.where(p.finegrained, fine, jac_k)
    pair = jnp.where(p.intermediate, whole_eq.astype(jnp.float32), param + correct)
    weight = jnp.where(name_eq, pair, 0.0)

    C_p = weight.shape[1]
    if matching == "greedy":
        matched = _greedy_in_order(name_eq, weight)
    elif C_p <= MAX_EXACT_OPTIMAL_CALLS:
        matched = _optimal_dp(weight)
    else:
        matched = jnp.maximum(_greedy_in_order(name_eq, weight), _greedy_best_first(weight))

    s_max = jnp.where(p.intermediate, 1.0 + n_g, 1.0 + jnp.sum(jnp.where(gv, 1 + nk_g, 0)))
    score = r_name + matched
    # score <= s_max by construction (keys are unique per call); the clip guarantees the
    # documented range even against a 2**-32 id collision.
    scaled = jnp.clip((c_hi - c_lo) * score / s_max + c_lo, jnp.minimum(c_lo, c_hi),
                      jnp.maximum(c_lo, c_hi))
    partial = jnp.where(p.coarse, c_lo, scaled)

    fail = ~x.pd_ok | x.pd_overflow
    # released quirks (flags are all False unless config.released_quirks): Counter(names) raises
    # on an unhashable name (not reached by REFINEDREWARD); pd_tool["parameters"] is read for every
    # same-name candidate (not by INTERMEDIATEREWARD).
    fail = fail | (~p.finegrained & ~p.coarse & jnp.any(x.pd_unhashable_name & pv) & ~names_equal)
    fail = fail | (~p.intermediate & ~p.coarse & jnp.any(x.pd_bad_params & pv & jnp.any(name_eq, axis=0)))
    correctness = jnp.where(exact, c_hi, jnp.where(fail, c_lo, partial))
    no_gt = jnp.where(p.response_zero, 0.0, jnp.where(x.pd_has_call_tag, c_lo, c_hi))
    correctness = jnp.where(x.gt_has_call, correctness, no_gt).astype(jnp.float32)

    fmt = jnp.where(x.format_ok, f_hi, f_lo).astype(jnp.float32)
    frac = _length_cents(x.think_words, step, p).astype(jnp.float32) / 100.0
    length = jnp.where(x.has_think, frac * (p.l_hi - p.l_lo) + p.l_lo, p.l_lo)
    length = jnp.where(p.use_length, length, 0.0).astype(jnp.float32)
    return ToolRLReward(total=fmt + correctness + length, format=fmt, correctness=correctness, length=length)


def toolrl_reward_core(batch: ToolCallBatch, step, params: RewardParams, matching: str = "optimal") -> ToolRLReward:
    """Un-jitted ToolRL reward of a batch: ``vmap`` of the per-sample score.

    Args:
      batch: :class:`ToolCallBatch` of ``[B, ...]`` arrays.
      step: integer training step, a scalar or ``[B]`` per-sample steps (traced).
      params: :func:`reward_params` of the config (traced).
      matching: 'greedy' | 'optimal' (static).

    Returns:
      :class:`ToolRLReward` of ``[B]`` float32 arrays.
    """
    fn = functools.partial(_score_sample, matching=matching)
    step = jnp.asarray(step)
    return jax.vmap(fn, in_axes=(0, 0 if step.ndim else None, None))(batch, step, params)


_toolrl_reward_jit = jax.jit(toolrl_reward_core, static_argnames=("matching",))


def toolrl_reward(batch: ToolCallBatch, step, config: ToolRLRewardConfig) -> ToolRLReward:
    """ToolRL reward of an encoded batch at ``step`` (jitted; compiles once per shape and matching).

    Works inside ``jax.jit`` (with ``config`` static) and under ``jax.vmap``.
    """
    step = jnp.asarray(step, dtype=jnp.int32)
    return _toolrl_reward_jit(batch, step, reward_params(config), matching=config.matching)


#: Fewest samples per worker of :func:`encode_parallel` (below it a worker costs more than it saves).
MIN_SAMPLES_PER_WORKER = 1024
_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _encode_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool kept for the life of the process (``spawn``: safe next to JAX's threads)."""
    if workers not in _POOLS:
        _POOLS[workers] = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")
        )
        atexit.register(_POOLS[workers].shutdown, wait=False, cancel_futures=True)
    return _POOLS[workers]


def encode_parallel(
    completions: Sequence[str], ground_truths: Sequence[str], config: ToolRLRewardConfig,
    workers: int | None = None, *, min_per_worker: int = MIN_SAMPLES_PER_WORKER,
) -> ToolCallBatch:
    """:func:`~toolrl_jax.rewards.encode.encode_batch` split over ``workers`` processes.

    Contiguous slices of at least ``min_per_worker`` samples are encoded in parallel and
    concatenated: the same arrays as one call (every id is a hash of the value; the only
    counter-based ids, those of NaN and unknown-type values, are compared within a sample only).
    ``workers`` None or 1, or a batch too small to split, encodes in this process.
    """
    n = len(completions)
    k = min(workers or 1, n // max(min_per_worker, 1))
    if k <= 1:
        return encode_batch(completions, ground_truths, config)
    bounds = np.linspace(0, n, k + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    parts = list(_encode_pool(int(workers)).map(
        encode_batch, [list(completions[s]) for s in slices],
        [list(ground_truths[s]) for s in slices], [config] * k,
    ))
    return ToolCallBatch(*(np.concatenate(field) for field in zip(*parts)))


def score_texts(
    completions: Sequence[str],
    ground_truths: Sequence[str],
    step: int = 0,
    config: ToolRLRewardConfig | None = None,
    *,
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Encode and score texts in one call; returns ``[B]`` numpy arrays total/format/correctness/length.

    The batch is padded to the next power of two (>= 8) so that varying batch sizes reuse a few
    compiled programs. ``workers`` > 1 encodes large batches in a process pool
    (:func:`encode_parallel`): the host encoding, not the jitted score, is the cost.
    """
    config = config or ToolRLRewardConfig()
    n = len(completions)
    if n != len(ground_truths):
        raise DataError(f"{n} completions but {len(ground_truths)} ground truths")
    if n == 0:
        return {k: np.zeros(0, np.float32) for k in ToolRLReward._fields}
    size = 8
    while size < n:
        size *= 2
    comps = list(completions) + [completions[0]] * (size - n)
    gts = list(ground_truths) + [ground_truths[0]] * (size - len(ground_truths))
    batch = encode_parallel(comps, gts, config, workers)
    out = toolrl_reward(batch, np.int32(step), config)
    return {k: np.asarray(getattr(out, k))[:n] for k in ToolRLReward._fields}
