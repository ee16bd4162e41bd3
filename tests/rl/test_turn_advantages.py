"""Turn-level GRPO advantages against a plain-Python reference on scripted multi-turn rollouts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolrl_jax.errors import ConfigError
from toolrl_jax.rollout.trajectory import Trajectory, TrajectoryRecord
from toolrl_jax.rl.turn_advantages import (
    TurnAdvantageConfig,
    token_turn_index,
    turn_level_advantages,
)


def _scripted_rollouts():
    """Two prompts x 3 samples; each sample: prompt, then turns (generated) and observations."""
    script = [  # (group, [turn lengths], observation length between turns)
        (0, [3, 2, 2], 2),
        (0, [2, 4], 1),
        (0, [1], 0),
        (1, [2, 2], 3),
        (1, [3, 1, 2, 1], 1),
        (1, [2, 2], 2),
    ]
    records = []
    for uid, (group, turns, obs) in enumerate(script):
        rec = TrajectoryRecord.from_prompt(uid, group, [5] * (2 + uid % 2))
        for i, n in enumerate(turns):
            rec.append_generated([7] * n, [-1.0] * n)
            if i + 1 < len(turns):
                rec.append_observation([9] * obs)
        records.append(rec)
    traj = Trajectory.from_records(records, pad_multiple=4)
    rng = np.random.default_rng(0)
    k = traj.turn_starts.shape[1]
    turn_mask = traj.turn_starts >= 0
    turn_rewards = np.where(turn_mask, rng.integers(0, 4, size=(len(traj), k)) / 3.0, 0.0)
    outcome = rng.normal(size=len(traj))
    return traj, turn_rewards, turn_mask, outcome


def _mean_std(xs, ddof):
    m = sum(xs) / len(xs)
    if len(xs) - ddof <= 0:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - ddof))


def _ref(traj, turn_rewards, turn_mask, outcome, cfg, row_mask=None):
    n, k = turn_rewards.shape
    valid = [True] * n if row_mask is None else list(row_mask)
    groups = {}
    for i in range(n):
        if valid[i]:
            groups.setdefault(int(traj.group_ids[i]), []).append(i)

    def norm(x, members, i):
        if len(members) < 2:
            return 0.0
        m, s = _mean_std([x[j] for j in members], cfg.std_ddof)
        return (x[i] - m) / (s + cfg.eps) if cfg.normalize_std else x[i] - m

    per_turn = np.zeros((n, k))
    for i in range(n):
        if not valid[i]:
            continue
        members = groups[int(traj.group_ids[i])]
        a_out = norm(list(outcome), members, i)
        for t in range(k):
            if not turn_mask[i, t]:
                continue
            same_turn = [j for j in members if turn_mask[j, t]]
            a_turn = norm(list(turn_rewards[:, t]), same_turn, i)
            later = sum(1 for u in range(t + 1, k) if turn_mask[i, u])
            per_turn[i, t] = cfg.turn_coef * a_turn + cfg.gamma ** later * a_out
    tokens = np.zeros(traj.tokens.shape)
    for i in range(n):
        for t in range(k):
            s, e = traj.turn_starts[i, t], traj.turn_ends[i, t]
            if s >= 0:
                tokens[i, s:e] = per_turn[i, t]
    return tokens, per_turn


def test_token_turn_index_from_trajectory():
    traj, *_ = _scripted_rollouts()
    tt = token_turn_index(traj.turn_starts, traj.turn_ends, traj.tokens.shape[1])
    np.testing.assert_array_equal(tt >= 0, traj.loss_mask == 1)
    # row 0: prompt of 2, turn 0 (3 tokens), obs 2, turn 1 (2), obs 2, turn 2 (2)
    np.testing.assert_array_equal(tt[0, :13], [-1, -1, 0, 0, 0, -1, -1, 1, 1, -1, -1, 2, 2])


@pytest.mark.parametrize(
    "cfg",
    [
        TurnAdvantageConfig(),
        TurnAdvantageConfig(gamma=0.9, turn_coef=0.5),
        TurnAdvantageConfig(gamma=0.0, normalize_std=False),
        TurnAdvantageConfig(std_ddof=0, eps=1e-3),
    ],
    ids=["mt_grpo", "discounted", "dr_grpo_gamma0", "ddof0"],
)
def test_turn_level_advantages_match_reference(cfg):
    traj, turn_rewards, turn_mask, outcome = _scripted_rollouts()
    tt = token_turn_index(traj.turn_starts, traj.turn_ends, traj.tokens.shape[1])
    tok, per_turn = turn_level_advantages(turn_rewards, turn_mask, outcome, traj.group_ids, tt,
                                          cfg)
    want_tok, want_turn = _ref(traj, turn_rewards, turn_mask, outcome, cfg)
    np.testing.assert_allclose(np.asarray(per_turn), want_turn, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tok), want_tok, atol=1e-5)
    assert np.any(np.abs(want_turn) > 0.1)


def test_padding_rows_and_two_turn_mt_grpo_case():
    traj, turn_rewards, turn_mask, outcome = _scripted_rollouts()
    tt = token_turn_index(traj.turn_starts, traj.turn_ends, traj.tokens.shape[1])
    row_mask = np.array([True, True, False, True, True, True])
    cfg = TurnAdvantageConfig(gamma=0.8)
    tok, per_turn = turn_level_advantages(turn_rewards, turn_mask, outcome, traj.group_ids, tt,
                                          cfg, num_groups=2, row_mask=row_mask)
    want_tok, want_turn = _ref(traj, turn_rewards, turn_mask, outcome, cfg, row_mask=row_mask)
    np.testing.assert_allclose(np.asarray(per_turn), want_turn, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tok), want_tok, atol=1e-5)
    assert np.all(np.asarray(tok)[2] == 0)

    # MT-GRPO by hand: 2 samples x 2 turns, turn reward on turn 0 only.
    r_turn = np.array([[1.0, 0.0], [0.0, 0.0]])
    r_out = np.array([1.0, -1.0])
    tt2 = np.array([[0, 0, -1, 1], [0, -1, 1, 1]])
    tok2, _ = turn_level_advantages(r_turn, np.ones((2, 2), bool), r_out, np.zeros(2, np.int32),
                                    tt2)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # (1 - 0.5) / std(ddof=1), std = sqrt(0.5)
    o = 1.0 / (math.sqrt(2.0) + 1e-6)
    want = np.array([[a + o, a + o, 0, o], [-a - o, 0, -o, -o]])
    np.testing.assert_allclose(np.asarray(tok2), want, atol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="gamma"):
        TurnAdvantageConfig(gamma=2.0)
    with pytest.raises(ConfigError, match="std_ddof"):
        TurnAdvantageConfig(std_ddof=3)
