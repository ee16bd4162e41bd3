"""Plain numpy / Python references for the RL learner tests (written independently of the
library code: loops over groups and rows, float64)."""

from __future__ import annotations

import math

import numpy as np


def ref_advantages(rewards, group_ids, estimator, *, ddof=1, eps=1e-6, row_mask=None):
    rewards = [float(r) for r in rewards]
    n = len(rewards)
    valid = [True] * n if row_mask is None else [bool(v) for v in row_mask]
    groups: dict[int, list[int]] = {}
    for i in range(n):
        if valid[i]:
            groups.setdefault(int(group_ids[i]), []).append(i)
    out = [0.0] * n

    def mean_std(xs):
        if not xs:
            return 0.0, 0.0
        m = sum(xs) / len(xs)
        if len(xs) - ddof <= 0:
            return m, 0.0
        return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - ddof))

    if estimator == "batch_norm":
        xs = [rewards[i] for i in range(n) if valid[i]]
        m, s = mean_std(xs)
        for i in range(n):
            if valid[i]:
                out[i] = (rewards[i] - m) / (s + eps)
        return np.array(out)
    centered = [0.0] * n
    for members in groups.values():
        xs = [rewards[i] for i in members]
        m, s = mean_std(xs)
        for i in members:
            if len(members) == 1:
                continue
            if estimator == "grpo":
                out[i] = (rewards[i] - m) / (s + eps)
            elif estimator == "dr_grpo":
                out[i] = rewards[i] - m
            elif estimator == "rloo":
                others = [rewards[j] for j in members if j != i]
                out[i] = rewards[i] - sum(others) / len(others)
            centered[i] = rewards[i] - m
    if estimator == "group_mean_batch_std":
        xs = [centered[i] for i in range(n) if valid[i]]
        _, s = mean_std(xs)
        out = [centered[i] / (s + eps) if valid[i] else 0.0 for i in range(n)]
    return np.array(out)


def ref_constant_groups(rewards, group_ids, row_mask=None):
    n = len(rewards)
    valid = [True] * n if row_mask is None else [bool(v) for v in row_mask]
    groups: dict[int, list[float]] = {}
    for i in range(n):
        if valid[i]:
            groups.setdefault(int(group_ids[i]), []).append(float(rewards[i]))
    constant = {g for g, xs in groups.items() if len(set(xs)) == 1}
    rows = np.array([valid[i] and int(group_ids[i]) not in constant for i in range(n)])
    return len(constant), rows


def ref_kl(lp, ref, estimator):
    d = lp - ref
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    return np.exp(-d) + d - 1.0


def ref_policy_loss(lp, old, adv, mask, *, eps_low=0.2, eps_high=0.2, dual_c=None,
                    kl_coef=0.0, kl_est="k3", ref=None, ent_coef=0.0, ent=None,
                    agg="token-mean", norm_const=None, tis_cap=None, sample=None):
    """Loss of one batch by explicit loops over rows and tokens."""
    lp, old, mask = (np.asarray(x, np.float64) for x in (lp, old, mask))
    adv = np.asarray(adv, np.float64)
    if adv.ndim == 1:
        adv = np.repeat(adv[:, None], lp.shape[1], axis=1)
    b, t = lp.shape
    row_losses, row_counts = [], []
    total, ntok = 0.0, 0.0
    for i in range(b):
        s, c = 0.0, 0.0
        for j in range(t):
            if mask[i, j] == 0:
                continue
            a = adv[i, j]
            r = math.exp(lp[i, j] - old[i, j])
            rc = min(max(r, 1 - eps_low), 1 + eps_high)
            loss = max(-a * r, -a * rc)
            if dual_c is not None and a < 0:
                loss = min(loss, -a * dual_c)
            if tis_cap is not None:
                loss *= min(math.exp(old[i, j] - sample[i, j]), tis_cap)
            if kl_coef > 0:
                loss += kl_coef * float(ref_kl(lp[i, j], ref[i, j], kl_est))
            if ent_coef > 0:
                loss -= ent_coef * ent[i, j]
            s += loss * mask[i, j]
            c += mask[i, j]
        row_losses.append(s)
        row_counts.append(c)
        total += s
        ntok += c
    nseq = sum(1 for c in row_counts if c > 0)
    if agg == "token-mean":
        return total / ntok if ntok else 0.0
    if agg == "seq-mean-token-mean":
        return sum(s / c for s, c in zip(row_losses, row_counts) if c > 0) / max(nseq, 1)
    cst = t if norm_const is None else norm_const
    return sum(s / cst for s in row_losses) / max(nseq, 1)


def ref_logprobs_entropy(hidden, kernel, targets, temperature=1.0):
    h = np.asarray(hidden, np.float64)
    w = np.asarray(kernel, np.float64)
    z = h @ w / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp = np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    ent = -(np.exp(logp) * logp).sum(-1)
    return lp, ent
