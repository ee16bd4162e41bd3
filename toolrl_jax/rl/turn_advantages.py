"""Turn-level GRPO advantages for multi-turn trajectories (per-turn rewards -> per-token credit).

Inputs (``B`` rows, at most ``K`` assistant turns per row):

* ``turn_rewards [B, K]``: reward of assistant turn ``k`` of row ``b`` (e.g. FTRL's ``2s/(k+1)``,
  a BFCL user turn's state/response check);
* ``turn_mask [B, K]`` bool: turn ``k`` exists in row ``b`` (and has a reward);
* ``outcome_rewards [B]``: the trajectory's outcome reward;
* ``group_ids [B]``: GRPO groups (samples of one prompt), ``row_mask [B]`` for padding rows;
* ``token_turn [B, T]`` int32: the turn index of each generated token, -1 on prompt /
  observation / padding tokens (:func:`token_turn_index` builds it from the rollout's
  ``turn_starts`` / ``turn_ends``).

Formula (turn index ``k``, group ``G = g(b)``, ``n_after(b, k)`` = number of existing turns of row
``b`` after turn ``k``)::

    At_{b,k} = (r_{b,k} - mean_{j in G, turn_mask[j,k]} r_{j,k}) / (std_{same set} + eps)
    Ao_b     = (R_b - mean_{j in G} R_j) / (std_G + eps)
    A_{b,k}  = turn_coef * At_{b,k} + gamma^{n_after(b,k)} * Ao_b
    adv[b, t] = A_{b, token_turn[b, t]}   (0 where token_turn = -1)

Each turn's reward is normalised among the group's samples *at the same turn index* (a turn
compares against the other rollouts' turn ``k``), and the outcome advantage is added to every
turn, discounted by ``gamma`` per later turn (the last turn gets it undiscounted). This is
MT-GRPO's estimator (Zeng et al. 2025, "Reinforcing Multi-Turn Reasoning in LLM Agents via
Turn-Level Credit Assignment", arXiv 2505.11821; released ``MTGRPOEnvTrainer``, ``aae`` mode:
``A = A^O + c * A^T`` on the tool-calling turn, ``A^O`` on the answer turn), generalised from
two turns to ``K``: with ``K = 2``, ``gamma = 1`` and turn rewards only on the first turn
(``r_{b,2}`` equal within each group, so ``At_{b,2} = 0``) it is exactly MT-GRPO. The discount
``gamma^{n_after}`` on the outcome follows the per-turn discounted return of GTPO (Ding et al.
2025, arXiv 2511.14846) and PORTool's decay (arXiv 2510.26020); ``gamma = 1`` (default) turns it
off. Std with ``std_ddof`` (1 = unbiased, as GRPO in released ToolRL/verl); a (group, turn) set of
one sample gets ``At = 0`` and a group of one gets ``Ao = 0``, as in GRPO. ``normalize_std=False``
drops the division (Dr. GRPO style).

Compute on the whole rollout batch before splitting into mini-batches (groups span rows).

Estimator ``turn_grpo`` (``algo.advantage.estimator=turn_grpo``, settings
``algo.turn_advantage``: :class:`TurnAdvantageConfig`) is this formula as an
:data:`~toolrl_jax.rl.advantages.ESTIMATORS` entry (a ``TokenEstimator`` with
``needs_turn_rewards``): ``r_{b,k}`` are the composed per-turn rewards of the reward components
that score turns (``train.rewards.score``: ``sum_c w_c turns_c``), ``R_b`` the total reward.
A turn without a reward of its own (``turn_mask`` False inside a row: BFCL rewards only the last
assistant turn of each user turn) is credited with the advantage of the next rewarded turn of
its row, the one that closes its segment::

    c(b, j)   = min {k >= j : turn_mask[b, k]}
    adv[b, t] = A_{b, c(b, token_turn[b, t])}, or Ao_b when row b has no rewarded turn >= j

so every generated token gets the credit of the segment it belongs to (with a reward on every
turn, FTRL, ``c(b, j) = j``). Registered on import of this module (``rl.train_step`` imports
it, so every user of ``AlgoConfig`` sees the entry).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from toolrl_jax.errors import ConfigError
from toolrl_jax.rl.advantages import ESTIMATORS, CreditInputs, TokenEstimator, group_stats


@dataclasses.dataclass(frozen=True, kw_only=True)
class TurnAdvantageConfig:
    """Settings of :func:`turn_level_advantages` (defaults: MT-GRPO, ``c = 1``, ``gamma = 1``).

    Attributes:
      turn_coef: weight ``c`` of the turn-level advantage.
      gamma: per-turn discount of the outcome advantage, in ``[0, 1]``.
      normalize_std: divide by the std (GRPO) or only centre (Dr. GRPO).
      std_ddof: 1 (unbiased, ToolRL/verl) or 0.
      eps: added to the std.
    """

    turn_coef: float = 1.0
    gamma: float = 1.0
    normalize_std: bool = True
    std_ddof: int = 1
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"algo.turn_advantage.gamma: must be in [0, 1], got {self.gamma}")
        if self.std_ddof not in (0, 1):
            raise ConfigError(f"algo.turn_advantage.std_ddof: must be 0 or 1, got {self.std_ddof}")
        if self.turn_coef < 0:
            raise ConfigError(f"algo.turn_advantage.turn_coef: must be >= 0, got {self.turn_coef}")


def token_turn_index(turn_starts: np.ndarray, turn_ends: np.ndarray, length: int) -> np.ndarray:
    """``[B, T]`` int32 turn index of each token from ``Trajectory.turn_starts / turn_ends``
    (``[B, K]``, -1 = no such turn); -1 outside every turn's generated span."""
    starts = np.asarray(turn_starts)
    ends = np.asarray(turn_ends)
    cols = np.arange(length)[None, None, :]
    inside = (cols >= starts[:, :, None]) & (cols < ends[:, :, None]) & (starts[:, :, None] >= 0)
    k = np.arange(starts.shape[1])[None, :, None]
    return np.max(np.where(inside, k, -1), axis=1).astype(np.int32)


def _normalise(x, seg, valid, num_segments, config):
    stats = group_stats(x, seg, num_groups=num_segments, row_mask=valid,
                        std_ddof=config.std_ddof)
    centered = x - stats.mean[seg]
    if config.normalize_std:
        centered = centered / (stats.std[seg] + config.eps)
    return jnp.where(valid & (stats.count[seg] > 1), centered, 0.0)


def turn_level_advantages(
    turn_rewards: jax.Array,
    turn_mask: jax.Array,
    outcome_rewards: jax.Array,
    group_ids: jax.Array,
    token_turn: jax.Array,
    config: TurnAdvantageConfig = TurnAdvantageConfig(),
    *,
    num_groups: int | None = None,
    row_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(token advantages [B, T], turn advantages [B, K])`` (formula in the module docstring).

    ``num_groups`` is a static bound on the group ids (default ``B``). Jit with ``config`` and
    ``num_groups`` static.
    """
    b, k = turn_rewards.shape
    num_groups = b if num_groups is None else int(num_groups)
    rows = jnp.ones((b,), bool) if row_mask is None else jnp.asarray(row_mask, bool)
    tmask = jnp.asarray(turn_mask, bool) & rows[:, None]
    gids = jnp.asarray(group_ids, jnp.int32)

    seg = (gids[:, None] * k + jnp.arange(k, dtype=jnp.int32)[None, :]).reshape(-1)
    a_turn = _normalise(turn_rewards.astype(jnp.float32).reshape(-1), seg, tmask.reshape(-1),
                        num_groups * k, config).reshape(b, k)
    a_out = _normalise(outcome_rewards.astype(jnp.float32), gids, rows, num_groups, config)

    after = jnp.cumsum(tmask[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1] - tmask.astype(jnp.int32)
    discount = jnp.float32(config.gamma) ** after.astype(jnp.float32)
    per_turn = jnp.where(tmask, config.turn_coef * a_turn + discount * a_out[:, None], 0.0)

    tt = jnp.asarray(token_turn, jnp.int32)
    tok = jnp.take_along_axis(per_turn, jnp.clip(tt, 0, k - 1), axis=1)
    return jnp.where(tt >= 0, tok, 0.0), per_turn


def credit_turn_index(token_turn: jax.Array, turn_mask: jax.Array) -> jax.Array:
    """``[B, T]`` int32: the rewarded turn whose advantage each token gets, ``c(b, j)`` of the
    module docstring (``K`` where row ``b`` has no rewarded turn at or after ``j``; -1 where
    ``token_turn`` is -1)."""
    tmask = jnp.asarray(turn_mask, bool)
    k = tmask.shape[1]
    idx = jnp.where(tmask, jnp.arange(k, dtype=jnp.int32)[None, :], k)
    nxt = jax.lax.cummin(idx, axis=1, reverse=True)
    tt = jnp.asarray(token_turn, jnp.int32)
    credit = jnp.take_along_axis(nxt, jnp.clip(tt, 0, k - 1), axis=1)
    return jnp.where(tt >= 0, credit, -1)


def segment_turn_advantages(
    turn_rewards: jax.Array,
    turn_mask: jax.Array,
    outcome_rewards: jax.Array,
    group_ids: jax.Array,
    token_turn: jax.Array,
    loss_mask: jax.Array,
    config: TurnAdvantageConfig = TurnAdvantageConfig(),
    *,
    num_groups: int | None = None,
) -> jax.Array:
    """``[B, T]`` token advantages of ``turn_grpo``: :func:`turn_level_advantages` with each
    unrewarded turn credited by the next rewarded turn of its row (module docstring), zero off
    ``loss_mask``. Jit with ``config`` and ``num_groups`` static."""
    tmask = jnp.asarray(turn_mask, bool)
    rewards = jnp.where(tmask, jnp.nan_to_num(turn_rewards.astype(jnp.float32)), 0.0)
    b, k = rewards.shape
    num_groups = b if num_groups is None else int(num_groups)
    _, per_turn = turn_level_advantages(rewards, tmask, outcome_rewards, group_ids,
                                        jnp.full((b, 1), -1, jnp.int32), config,
                                        num_groups=num_groups)
    a_out = _normalise(outcome_rewards.astype(jnp.float32), jnp.asarray(group_ids, jnp.int32),
                       jnp.ones((b,), bool), num_groups, config)
    credit = credit_turn_index(token_turn, tmask)
    tok = jnp.take_along_axis(per_turn, jnp.clip(credit, 0, k - 1), axis=1)
    tok = jnp.where(credit == k, a_out[:, None], tok)
    tok = jnp.where(credit >= 0, tok, 0.0)
    return tok * jnp.asarray(loss_mask, jnp.float32)


_segment_turn_advantages = jax.jit(segment_turn_advantages,
                                   static_argnames=("config", "num_groups"))


def turn_grpo(inputs: CreditInputs) -> jax.Array:
    """``turn_grpo``: per-token advantages from the per-turn rewards of a :class:`CreditInputs`
    (settings ``inputs.algo.turn_advantage``)."""
    if inputs.turn_rewards is None or inputs.turn_mask is None:
        raise ConfigError("algo.advantage.estimator=turn_grpo: this batch has no per-turn "
                          "rewards; add a reward component that scores turns (e.g. "
                          "reward.components.ftrl=1.0 or reward.components.bfcl=1.0)")
    return _segment_turn_advantages(
        jnp.asarray(inputs.turn_rewards, jnp.float32), jnp.asarray(inputs.turn_mask, bool),
        jnp.asarray(inputs.rewards, jnp.float32), jnp.asarray(inputs.group_ids, jnp.int32),
        jnp.asarray(inputs.token_turn, jnp.int32), jnp.asarray(inputs.loss_mask, jnp.float32),
        inputs.algo.turn_advantage, num_groups=int(inputs.num_groups))


ESTIMATORS.register("turn_grpo")(TokenEstimator(turn_grpo, needs_turn_rewards=True))
