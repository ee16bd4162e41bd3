"""ToolRL's fine-grained tool-call reward as a jitted pure function (Qian et al., arXiv 2504.13958).

``toolrl_reward(batch, step, config) -> ToolRLReward(total, format, correctness, length)``, each
``[B]`` float32, where ``batch`` is a :class:`~toolrl_jax.rewards.encode.ToolCallBatch` from
:func:`~toolrl_jax.rewards.encode.encode_batch`, ``step`` an integer (traced: changing it never
recompiles) and ``config`` a :class:`~toolrl_jax.rewards.config.ToolRLRewardConfig` (static).

R = R_format + R_correct (+ R_length):

* R_format = f_hi if the format regex matched else f_lo (default [0, 1]).
* R_correct, ground truth G (calls g with keys K_g), prediction P:
    - no ``<tool_call>`` in the ground truth: 0 ('zero', released) or hi/lo by whether P has no
      ``<tool_call>`` tag ('no_call');
    - P unparsable (or too many calls for the static shape): lo;
    - P == G as ordered lists of calls: hi;
    - else score = r_name + sum over matched pairs (g, p) of [J(K_g, K_p) + #{k in K_g: p[k] == g[k]}]
      with r_name = multiset Jaccard of the name lists and J the key Jaccard; pairs need equal
      names; the matching is greedy in ground-truth order (released) or maximises the total
      (paper; exact bitmask DP over the predicted calls for max_calls <= 10, else the better of
      two greedy passes, ground-truth order and best-pair-first);
      S_max = 1 + sum_g (1 + |K_g|); R_correct = (hi - lo) * score / S_max + lo.
* R_length = round(words(think) / L, 2) capped at 1, scaled to the length range.

Variants change the pieces: coarse (hi iff exact else lo), intermediate (pair score 1 iff the
whole call is equal; S_max = 1 + |G|), finegrained (Jaccards -> ordered list equality),
equal_max (correctness range = (-f_hi, f_hi)), two_stage (step < 30: correctness range / 3;
later: format range / 2), dynamic_code (released SCHEDULEREWARD, s = step / 150):
f_hi = max(2 - (2 - f_hi) s, 1), f_lo = min(-2 + (2 + f_lo) s, -1), c_hi = min((c_hi - 2) s + 2, 3),
c_lo = max((c_lo + 2) s - 2, -3); dynamic (paper: same with s = p = min(step / total_steps, 1));
length (L = 512); dynamic_length (L = (640 - 384) step / 105 + 384).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolrl_jax.rewards.config import MAX_EXACT_OPTIMAL_CALLS, ToolRLRewardConfig
from toolrl_jax.rewards.encode import ToolCallBatch, encode_batch

__all__ = ["ToolRLReward", "toolrl_reward", "toolrl_reward_core", "score_texts", "reward_ranges",
           "length_tie_table"]

_NEG = -1e9
_KEY_MUL = 1 << 20


class ToolRLReward(NamedTuple):
    """Per-sample reward components, each ``[B]`` float32; ``total = format + correctness + length``."""

    total: jax.Array
    format: jax.Array
    correctness: jax.Array
    length: jax.Array


# ----------------------------------------------------------------------------- ranges
def reward_ranges(step, config: ToolRLRewardConfig):
    """(f_lo, f_hi, c_lo, c_hi) float32 scalars at ``step`` for the configured variant."""
    step = jnp.asarray(step, jnp.float32)
    f_lo, f_hi = (jnp.float32(v) for v in config.format_range)
    c_lo, c_hi = (jnp.float32(v) for v in config.correctness_range)
    v = config.variant
    if v == "equal_max":
        c_lo, c_hi = -f_hi, f_hi
    elif v == "two_stage":
        early = step < config.two_stage_step
        c_lo, c_hi = jnp.where(early, c_lo / 3, c_lo), jnp.where(early, c_hi / 3, c_hi)
        f_lo, f_hi = jnp.where(early, f_lo, f_lo / 2), jnp.where(early, f_hi, f_hi / 2)
    elif v in ("dynamic", "dynamic_code"):
        if v == "dynamic_code":
            s = step / config.dynamic_code_steps
        else:
            s = jnp.clip(step / config.total_steps, 0.0, 1.0)
        f_hi = jnp.maximum(2.0 - (2.0 - f_hi) * s, 1.0)
        f_lo = jnp.minimum(-2.0 + (2.0 + f_lo) * s, -1.0)
        c_hi = jnp.minimum((c_hi - 2.0) * s + 2.0, 3.0)
        c_lo = jnp.maximum((c_lo + 2.0) * s - 2.0, -3.0)
    return f_lo, f_hi, c_lo, c_hi


# ----------------------------------------------------------------------------- length
def _half_even_div(num: int, den: int) -> int:
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


def _length_step_max(config: ToolRLRewardConfig) -> int:
    start, end, steps = config.length_schedule
    if end > start:
        return max(0, (2**31 // 100 - 2 * steps - start * steps) // (end - start))
    if end < start:
        return max(0, (start * steps - steps) // (start - end))
    return 2**30


def length_tie_table(config: ToolRLRewardConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys ``step * 2**20 + words`` and cent corrections where Python's float64
    ``round(words / L, 2)`` differs from rounding the exact ratio half-to-even.

    Those are exact half-cent ties (e.g. step 30: L = 457.142857..., 48 words -> 0.105) that the
    released code resolves by float64 representation error; found by exact integer arithmetic.
    For 'length' the key is just ``words`` (L does not depend on the step).
    """
    keys: list[int] = []
    deltas: list[int] = []
    odd = np.arange(1, 200, 2, dtype=np.int64)  # 2k + 1, k = 0..99 (ties up to x = 1)
    if config.variant == "length":
        L = config.length_words
        for m in odd.tolist():
            if (L * m) % 200 == 0:
                n = L * m // 200
                py = round(min(round(n / L, 2), 1.0) * 100)
                he = min(_half_even_div(100 * n, L), 100)
                if py != he:
                    keys.append(n)
                    deltas.append(py - he)
    elif config.variant == "dynamic_length":
        start, end, steps = config.length_schedule
        S = min(config.length_tie_steps, _length_step_max(config) + 1)
        s = np.arange(S, dtype=np.int64)
        d = start * steps + (end - start) * s  # L = d / steps
        num = d[:, None] * odd[None, :]
        hit_s, hit_k = np.nonzero(num % (200 * steps) == 0)
        for si, ki in zip(hit_s.tolist(), hit_k.tolist()):
            n = int(num[si, ki] // (200 * steps))
            if n >= _KEY_MUL:
                continue
            L64 = (end - start) * si / steps + start  # the released expression, float64
            py = round(min(round(n / L64, 2), 1.0) * 100)
            he = min(_half_even_div(100 * n * steps, int(d[si])), 100)
            if py != he:
                keys.append(si * _KEY_MUL + n)
                deltas.append(py - he)
    order = np.argsort(np.asarray(keys, np.int64), kind="stable")
    return (np.asarray(keys, np.int32)[order].reshape(-1), np.asarray(deltas, np.int32)[order].reshape(-1))


def _length_cents(words, step, config: ToolRLRewardConfig, table):
    """round(words / L(step), 2) * 100, capped at 100, exactly as Python float64 computes it."""
    words = jnp.maximum(words.astype(jnp.int32), 0)
    if config.variant == "length":
        L = config.length_words
        n = jnp.minimum(words, L + 1)
        num, den = 100 * n, jnp.int32(L)
        key = n
    else:
        start, end, steps = config.length_schedule
        step_i = jnp.clip(jnp.asarray(step).astype(jnp.int32), 0, _length_step_max(config))
        den = start * steps + (end - start) * step_i
        n = jnp.minimum(words, den // steps + 1)
        num = 100 * n * steps
        key = jnp.where(step_i < config.length_tie_steps, step_i * _KEY_MUL + n, -1)
    q, r = num // den, num % den
    q = q + ((2 * r > den) | ((2 * r == den) & (q % 2 == 1))).astype(jnp.int32)
    keys, deltas = table
    if keys.size:
        idx = jnp.clip(jnp.searchsorted(jnp.asarray(keys), key), 0, keys.size - 1)
        hit = jnp.asarray(keys)[idx] == key
        q = q + jnp.where(hit, jnp.asarray(deltas)[idx], 0)
    return jnp.minimum(q, 100)


# ----------------------------------------------------------------------------- matching
def _greedy_in_order(cand, weight, whole_eq, intermediate: bool):
    """Released matching: for g in order take the first unused candidate with the largest
    strictly positive score (intermediate: the first unused whole-equal call, score 1)."""
    C_g, C_p = cand.shape

    def body(used, g):
        c = cand[g] & ~used
        if intermediate:
            hit = c & whole_eq[g]
            idx = jnp.argmax(hit)
            take = jnp.any(hit)
            s = jnp.float32(1.0)
        else:
            sc = jnp.where(c, weight[g], -1.0)
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

    dp[mask] = best total using exactly the predicted calls in ``mask``; each ground-truth row
    either stays unmatched or takes one unused column. O(C_g * C_p * 2**C_p).
    """
    C_g, C_p = w.shape
    masks = np.arange(1 << C_p)
    dp0 = jnp.where(jnp.asarray(masks == 0), 0.0, _NEG).astype(jnp.float32)

    def body(dp, g):
        new = dp
        for j in range(C_p):
            has_j = jnp.asarray((masks >> j) & 1 == 1)
            src = jnp.asarray(masks ^ (1 << j))
            new = jnp.maximum(new, jnp.where(has_j, dp[src] + w[g, j], _NEG))
        return new, None

    dp, _ = jax.lax.scan(body, dp0, jnp.arange(C_g))
    return jnp.max(dp)


# ----------------------------------------------------------------------------- one sample
def _score_sample(x: ToolCallBatch, step, config: ToolRLRewardConfig, table):
    v = config.variant
    f_lo, f_hi, c_lo, c_hi = reward_ranges(step, config)

    gv, pv = x.gt_call_valid, x.pd_call_valid
    n_g, n_p = jnp.sum(gv), jnp.sum(pv)
    same_slots = jnp.all(gv == pv)
    exact = x.pd_ok & ~x.pd_overflow & same_slots & jnp.all(jnp.where(gv, x.gt_call == x.pd_call, True))
    names_equal = same_slots & jnp.all(jnp.where(gv, x.gt_name == x.pd_name, True))

    name_eq = gv[:, None] & pv[None, :] & (x.gt_name[:, None] == x.pd_name[None, :])  # [C, C]
    whole_eq = name_eq & (x.gt_call[:, None] == x.pd_call[None, :])

    # r_name: multiset Jaccard of the name lists (finegrained: ordered equality).
    if v == "finegrained":
        r_name = names_equal.astype(jnp.float32)
    else:
        gg = gv[:, None] & gv[None, :] & (x.gt_name[:, None] == x.gt_name[None, :])
        rank = jnp.sum(jnp.tril(gg, k=-1), axis=1)  # earlier ground-truth calls with this name
        inter = jnp.sum(gv & (rank < jnp.sum(name_eq, axis=1)))
        union = n_g + n_p - inter
        jac = jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0).astype(jnp.float32)
        r_name = jnp.where(names_equal, 1.0, jnp.where((n_g == 0) | (n_p == 0), 0.0, jac))

    # pair scores [C_g, C_p]
    ga, pa = x.gt_arg_valid, x.pd_arg_valid  # [C, A]
    key_eq = (ga[:, None, :, None] & pa[None, :, None, :]
              & (x.gt_key[:, None, :, None] == x.pd_key[None, :, None, :]))  # [Cg, Cp, A, A]
    val_eq = key_eq & (x.gt_val[:, None, :, None] == x.pd_val[None, :, None, :])
    correct = jnp.sum(jnp.any(val_eq, axis=3), axis=2).astype(jnp.float32)
    nk_g, nk_p = jnp.sum(ga, axis=1), jnp.sum(pa, axis=1)
    if v == "finegrained":
        ordered = jnp.all(jnp.where(ga[:, None, :], x.gt_key[:, None, :] == x.pd_key[None, :, :], True), axis=2)
        param = ((nk_g[:, None] == nk_p[None, :]) & ordered).astype(jnp.float32)
    else:
        inter_k = jnp.sum(jnp.any(key_eq, axis=3), axis=2)
        union_k = nk_g[:, None] + nk_p[None, :] - inter_k
        param = jnp.where(union_k > 0, inter_k / jnp.maximum(union_k, 1), 1.0).astype(jnp.float32)
    intermediate = v == "intermediate"
    pair = whole_eq.astype(jnp.float32) if intermediate else param + correct
    weight = jnp.where(name_eq, pair, 0.0)

    if config.matching == "greedy":
        matched = _greedy_in_order(name_eq, weight, whole_eq, intermediate)
    elif config.max_calls <= MAX_EXACT_OPTIMAL_CALLS:
        matched = _optimal_dp(weight)
    else:
        matched = jnp.maximum(_greedy_in_order(name_eq, weight, whole_eq, intermediate),
                              _greedy_best_first(weight))

    if intermediate:
        s_max = 1.0 + n_g
    else:
        s_max = 1.0 + jnp.sum(jnp.where(gv, 1 + nk_g, 0))
    score = r_name + matched
    partial = (c_hi - c_lo) * score / s_max + c_lo

    fail = ~x.pd_ok | x.pd_overflow
    if v != "finegrained":  # Counter(names) raises on an unhashable name
        fail = fail | (jnp.any(x.pd_unhashable_name & pv) & ~names_equal)
    if not intermediate:  # pd_tool["parameters"] read for every same-name candidate
        fail = fail | jnp.any(x.pd_bad_params & pv & jnp.any(name_eq, axis=0))
    if v == "coarse":
        partial = c_lo
    correctness = jnp.where(exact, c_hi, jnp.where(fail, c_lo, partial))
    if config.response_only == "zero":
        no_gt = jnp.float32(0.0)
    else:
        no_gt = jnp.where(x.pd_has_call_tag, c_lo, c_hi)
    correctness = jnp.where(x.gt_has_call, correctness, no_gt).astype(jnp.float32)

    fmt = jnp.where(x.format_ok, f_hi, f_lo).astype(jnp.float32)
    if config.uses_length:
        l_lo, l_hi = config.length_range
        frac = _length_cents(x.think_words, step, config, table).astype(jnp.float32) / 100.0
        length = jnp.where(x.has_think, frac * (l_hi - l_lo) + l_lo, l_lo).astype(jnp.float32)
    else:
        length = jnp.float32(0.0)
    return ToolRLReward(total=fmt + correctness + length, format=fmt, correctness=correctness, length=length)


def toolrl_reward_core(batch: ToolCallBatch, step, config: ToolRLRewardConfig) -> ToolRLReward:
    """Un-jitted ToolRL reward of a batch: ``vmap`` of the per-sample score (see module docs).

    Args:
      batch: :class:`ToolCallBatch` of ``[B, ...]`` arrays.
      step: integer training step (scalar; may be traced).
      config: static :class:`ToolRLRewardConfig`.

    Returns:
      :class:`ToolRLReward` of ``[B]`` float32 arrays.
    """
    table = length_tie_table(config) if config.uses_length else (np.zeros(0, np.int32), np.zeros(0, np.int32))
    step = jnp.asarray(step)
    fn = functools.partial(_score_sample, config=config, table=table)
    return jax.vmap(fn, in_axes=(0, None))(batch, step)


#: Jitted :func:`toolrl_reward_core`; ``config`` is static, ``step`` is traced.
toolrl_reward = jax.jit(toolrl_reward_core, static_argnames=("config",))


def score_texts(
    completions: Sequence[str],
    ground_truths: Sequence[str],
    step: int = 0,
    config: ToolRLRewardConfig | None = None,
) -> dict[str, np.ndarray]:
    """Encode and score texts in one call; returns numpy arrays total/format/correctness/length."""
    config = config or ToolRLRewardConfig()
    batch = encode_batch(completions, ground_truths, config)
    out = toolrl_reward(batch, jnp.int32(step), config)
    return {k: np.asarray(getattr(out, k)) for k in ToolRLReward._fields}
