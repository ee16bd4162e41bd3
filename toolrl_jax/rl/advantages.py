"""Outcome advantages for group-based policy gradients (GRPO, Dr. GRPO, RLOO, batch-normalised).

Every function here is pure over fixed-shape arrays and can be jitted:

* ``rewards``   ``[B]`` float32, one scalar reward per sampled completion;
* ``group_ids`` ``[B]`` int32, the prompt group each completion belongs to, any integers in
  ``[0, num_groups)`` (groups may have different sizes and need not be contiguous);
* ``row_mask``  ``[B]`` bool (optional), False for padding rows added to reach a static batch
  bucket: they belong to no group, do not change any statistic and get advantage 0.

``num_groups`` is a static upper bound on the group ids (it defaults to ``B``, which always
suffices when the ids are ``0..B-1`` or smaller); per-group statistics use
``jax.ops.segment_sum`` with that many segments.

Groups split across micro-batches: advantages depend on whole groups, so compute them once on the
full rollout batch (this module), broadcast them to tokens, and only then split the batch into
PPO mini-batches / gradient-accumulation micro-batches (the train step never recomputes them).

Estimators (``r_i`` reward of row i, ``G`` its group, ``n = |G|``):

* ``grpo``       ``A_i = (r_i - mean_G) / (std_G + eps)`` (Shao et al. 2024, DeepSeekMath, arXiv
  2402.03300). ``std_ddof=1`` uses the unbiased ``n-1`` standard deviation like released
  ToolRL/verl (``torch.std``); ``std_ddof=0`` uses ``n``. A group of one gets ``A = 0``.
* ``dr_grpo``    ``A_i = r_i - mean_G`` (Liu et al. 2025, "Understanding R1-Zero-Like Training",
  arXiv 2503.20783): no division by the std.
* ``rloo``       ``A_i = r_i - mean_{j in G, j != i} r_j = n/(n-1) (r_i - mean_G)``
  (Ahmadian et al. 2024, arXiv 2402.14740). A group of one gets ``A = 0``.
* ``batch_norm`` ``A_i = (r_i - mean_B) / (std_B + eps)`` over all valid rows of the batch,
  ignoring groups (REINFORCE++-style global whitening; std with ``std_ddof``).
* ``group_mean_batch_std`` ``A_i = (r_i - mean_G) / (std_B(r - mean_G) + eps)``: group baseline,
  batch-level scale ("Lite PPO", arXiv 2508.08221).

DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476) drops groups whose rewards are all
equal (all correct or all wrong: zero advantage, no learning signal). :func:`constant_groups`
reports how many such groups there are and a per-row mask of the rows in non-constant groups; the
trainer decides whether to drop them and resample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from toolrl_jax.errors import ConfigError
from toolrl_jax.registry import Registry

#: Advantage estimators by name (``algo.advantage.estimator``). An entry is either
#: ``f(rewards, ctx: EstimatorInputs) -> [B] advantages``, traced inside :func:`compute_advantages`
#: (pure, jittable), or a :class:`TokenEstimator` (per-token credit from a :class:`CreditInputs`).
#: Add one with ``@ESTIMATORS.register("name")`` / ``ESTIMATORS.register("name")(TokenEstimator(f))``.
ESTIMATORS: Registry[Callable[..., jax.Array]] = Registry(
    "advantage estimator", config_key="algo.advantage.estimator"
)


@dataclasses.dataclass(frozen=True)
class CreditInputs:
    """What a per-token estimator sees: ``B`` rows of ``T`` tokens (this process's rows, whole
    groups), built by the trainer after scoring.

    Attributes:
      rewards: ``[B]`` float32 total (outcome) reward of each row.
      group_ids: ``[B]`` int32 groups, ``0 .. num_groups-1``.
      num_groups: static bound on the group ids.
      loss_mask: ``[B, T]`` float32, 1 on generated (trained) tokens.
      token_turn: ``[B, T]`` int32 assistant-turn index of each generated token, -1 elsewhere.
      turn_rewards: ``[B, K]`` float32 per-assistant-turn rewards (components that score each
        turn), or None.
      turn_mask: ``[B, K]`` bool, turn ``k`` of row ``b`` exists and has a reward, or None.
      values: ``[B, T]`` float32 critic values at rollout time, or None (no critic).
      old_logprobs / ref_logprobs: ``[B, T]`` float32 log-probs of the rollout policy and the
        KL reference, or None (for token-level KL rewards).
      algo: the frozen ``algo`` config (``toolrl_jax.rl.train_step.AlgoConfig``).
    """

    rewards: Any
    group_ids: Any
    num_groups: int
    loss_mask: Any
    token_turn: Any
    algo: Any
    turn_rewards: Any = None
    turn_mask: Any = None
    values: Any = None
    old_logprobs: Any = None
    ref_logprobs: Any = None


@dataclasses.dataclass(frozen=True)
class TokenEstimator:
    """An :data:`ESTIMATORS` entry that assigns per-token advantages ``[B, T]`` from a
    :class:`CreditInputs` (turn-level GRPO, GAE with a critic) instead of ``[B]`` from the
    rewards alone. The trainer's credit stage calls ``fn(inputs)``.

    Attributes:
      fn: ``CreditInputs -> [B, T]`` float32 advantages (0 off the loss mask).
      needs_values: the estimator reads ``inputs.values`` (a critic must be configured).
      needs_turn_rewards: the estimator reads ``inputs.turn_rewards`` (a reward component must
        score each turn): a bool, or a function of the ``algo`` config when a setting decides
        (``gae`` with ``algo.gae.turn_reward_coef > 0``); see :meth:`uses_turn_rewards`.
    """

    fn: Callable[[CreditInputs], Any]
    needs_values: bool = False
    needs_turn_rewards: bool | Callable[[Any], bool] = False

    def __call__(self, inputs: CreditInputs) -> Any:
        return self.fn(inputs)

    def uses_turn_rewards(self, algo: Any) -> bool:
        """Whether this estimator, under the ``algo`` config, reads per-turn rewards."""
        need = self.needs_turn_rewards
        return bool(need(algo) if callable(need) else need)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdvantageConfig:
    """How outcome rewards become advantages.

    Attributes:
      estimator: one of ``grpo`` (default), ``dr_grpo``, ``rloo``, ``batch_norm``,
        ``group_mean_batch_std``.
      std_ddof: 1 for the unbiased (n-1) std like released ToolRL/verl, 0 for the population std.
      eps: added to the std in the denominator (1e-6 as in ToolRL/verl).
    """

    estimator: str = "grpo"
    std_ddof: int = 1
    eps: float = 1e-6

    def __post_init__(self) -> None:
        ESTIMATORS.get(self.estimator)  # ConfigError naming the registered estimators
        if self.std_ddof not in (0, 1):
            raise ConfigError(f"advantage.std_ddof: must be 0 or 1, got {self.std_ddof}")
        if not self.eps >= 0:
            raise ConfigError(f"advantage.eps: must be >= 0, got {self.eps}")


class GroupStats(NamedTuple):
    """Per-group statistics, each ``[num_groups]``."""

    count: jax.Array  # float32 number of valid rows in the group
    mean: jax.Array
    std: jax.Array  # with the requested ddof; 0 where count <= ddof
    is_constant: jax.Array  # bool: non-empty and max == min


class AdvantageOutput(NamedTuple):
    """Advantages and the DAPO dynamic-sampling report.

    Attributes:
      advantages: ``[B]`` float32 (0 on padding rows).
      nonconstant_row_mask: ``[B]`` bool, True for valid rows whose group has at least two
        different rewards (keep these under DAPO dynamic sampling).
      num_constant_groups: int32 scalar, non-empty groups whose rewards are all equal (a group
        of one counts as constant).
      num_groups: int32 scalar, non-empty groups.
    """

    advantages: jax.Array
    nonconstant_row_mask: jax.Array
    num_constant_groups: jax.Array
    num_groups: jax.Array


def _row_mask(rewards: jax.Array, row_mask: jax.Array | None) -> jax.Array:
    if row_mask is None:
        return jnp.ones(rewards.shape, dtype=bool)
    return row_mask.astype(bool)


def group_stats(
    rewards: jax.Array,
    group_ids: jax.Array,
    *,
    num_groups: int | None = None,
    row_mask: jax.Array | None = None,
    std_ddof: int = 1,
) -> GroupStats:
    """Count, mean, std (two-pass, ``ddof``) and constancy of each group.

    Args:
      rewards: ``[B]`` rewards.
      group_ids: ``[B]`` int group ids in ``[0, num_groups)``.
      num_groups: static number of segments (default ``B``).
      row_mask: ``[B]`` bool, False rows are ignored.
      std_ddof: 0 or 1.

    Returns:
      :class:`GroupStats` with ``[num_groups]`` arrays.
    """
    rewards = rewards.astype(jnp.float32)
    num_groups = rewards.shape[0] if num_groups is None else int(num_groups)
    valid = _row_mask(rewards, row_mask)
    w = valid.astype(jnp.float32)
    seg = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=num_groups)  # noqa: E731
    count = seg(w)
    mean = seg(rewards * w) / jnp.maximum(count, 1.0)
    dev = (rewards - mean[group_ids]) * w
    sq = seg(dev * dev)
    denom = count - std_ddof
    std = jnp.where(denom > 0, jnp.sqrt(sq / jnp.maximum(denom, 1.0)), 0.0)
    big = jnp.finfo(jnp.float32).max
    gmax = jax.ops.segment_max(jnp.where(valid, rewards, -big), group_ids, num_segments=num_groups)
    gmin = jax.ops.segment_min(jnp.where(valid, rewards, big), group_ids, num_segments=num_groups)
    is_constant = (count > 0) & (gmax == gmin)
    return GroupStats(count=count, mean=mean, std=std, is_constant=is_constant)


def _masked_batch_mean_std(
    x: jax.Array, valid: jax.Array, ddof: int
) -> tuple[jax.Array, jax.Array]:
    w = valid.astype(jnp.float32)
    n = jnp.sum(w)
    mean = jnp.sum(x * w) / jnp.maximum(n, 1.0)
    dev = (x - mean) * w
    std = jnp.where(n - ddof > 0, jnp.sqrt(jnp.sum(dev * dev) / jnp.maximum(n - ddof, 1.0)), 0.0)
    return mean, std


class EstimatorInputs(NamedTuple):
    """What an estimator sees besides the rewards (all ``[B]`` unless noted)."""

    group_ids: jax.Array  # int32
    valid: jax.Array  # bool, False for padding rows
    stats: GroupStats  # per group, [num_groups]
    config: AdvantageConfig


def _centered(rewards: jax.Array, x: EstimatorInputs) -> tuple[jax.Array, jax.Array, jax.Array]:
    count = x.stats.count[x.group_ids]
    return rewards - x.stats.mean[x.group_ids], count, count <= 1.0


@ESTIMATORS.register("grpo")
def _grpo(rewards: jax.Array, x: EstimatorInputs) -> jax.Array:
    centered, _, singleton = _centered(rewards, x)
    return jnp.where(singleton, 0.0, centered / (x.stats.std[x.group_ids] + x.config.eps))


@ESTIMATORS.register("dr_grpo")
def _dr_grpo(rewards: jax.Array, x: EstimatorInputs) -> jax.Array:
    centered, _, singleton = _centered(rewards, x)
    return jnp.where(singleton, 0.0, centered)


@ESTIMATORS.register("rloo")
def _rloo(rewards: jax.Array, x: EstimatorInputs) -> jax.Array:
    centered, count, singleton = _centered(rewards, x)
    return jnp.where(singleton, 0.0, centered * count / jnp.maximum(count - 1.0, 1.0))


@ESTIMATORS.register("batch_norm")
def _batch_norm(rewards: jax.Array, x: EstimatorInputs) -> jax.Array:
    mean, std = _masked_batch_mean_std(rewards, x.valid, x.config.std_ddof)
    return (rewards - mean) / (std + x.config.eps)


@ESTIMATORS.register("group_mean_batch_std")
def _group_mean_batch_std(rewards: jax.Array, x: EstimatorInputs) -> jax.Array:
    centered, _, singleton = _centered(rewards, x)
    centered = jnp.where(singleton, 0.0, centered)
    _, std = _masked_batch_mean_std(centered, x.valid, x.config.std_ddof)
    return centered / (std + x.config.eps)


def compute_advantages(
    rewards: jax.Array,
    group_ids: jax.Array,
    config: AdvantageConfig = AdvantageConfig(),
    *,
    num_groups: int | None = None,
    row_mask: jax.Array | None = None,
) -> AdvantageOutput:
    """Advantages ``[B]`` for ``config.estimator`` plus the constant-group report.

    Formulas are in the module docstring. Padding rows (``row_mask`` False) get 0. Rows of a
    group of one get 0 for ``grpo``, ``dr_grpo``, ``rloo`` and ``group_mean_batch_std``.
    Jit with ``config`` and ``num_groups`` static (``jax.jit(compute_advantages,
    static_argnames=("config", "num_groups"))``); the frozen config is hashable.
    """
    rewards = rewards.astype(jnp.float32)
    group_ids = group_ids.astype(jnp.int32)
    valid = _row_mask(rewards, row_mask)
    stats = group_stats(
        rewards, group_ids, num_groups=num_groups, row_mask=valid, std_ddof=config.std_ddof
    )
    inputs = EstimatorInputs(group_ids=group_ids, valid=valid, stats=stats, config=config)
    adv = ESTIMATORS.get(config.estimator)(rewards, inputs)
    adv = jnp.where(valid, adv, 0.0).astype(jnp.float32)
    nonconstant_rows = valid & ~stats.is_constant[group_ids]
    nonempty = stats.count > 0
    return AdvantageOutput(
        advantages=adv,
        nonconstant_row_mask=nonconstant_rows,
        num_constant_groups=jnp.sum(stats.is_constant).astype(jnp.int32),
        num_groups=jnp.sum(nonempty).astype(jnp.int32),
    )


def grpo_advantages(
    rewards: jax.Array,
    group_ids: jax.Array,
    *,
    num_groups: int | None = None,
    row_mask: jax.Array | None = None,
    std_ddof: int = 1,
    eps: float = 1e-6,
) -> jax.Array:
    """``[B]`` GRPO advantages ``(r - mean_G) / (std_G + eps)``; see :func:`compute_advantages`."""
    cfg = AdvantageConfig(estimator="grpo", std_ddof=std_ddof, eps=eps)
    return compute_advantages(
        rewards, group_ids, cfg, num_groups=num_groups, row_mask=row_mask
    ).advantages


def dr_grpo_advantages(
    rewards: jax.Array,
    group_ids: jax.Array,
    *,
    num_groups: int | None = None,
    row_mask: jax.Array | None = None,
) -> jax.Array:
    """``[B]`` Dr. GRPO advantages ``r - mean_G``."""
    cfg = AdvantageConfig(estimator="dr_grpo")
    return compute_advantages(
        rewards, group_ids, cfg, num_groups=num_groups, row_mask=row_mask
    ).advantages


def rloo_advantages(
    rewards: jax.Array,
    group_ids: jax.Array,
    *,
    num_groups: int | None = None,
    row_mask: jax.Array | None = None,
) -> jax.Array:
    """``[B]`` RLOO advantages ``r_i - mean_{j != i} r_j``."""
    cfg = AdvantageConfig(estimator="rloo")
    return compute_advantages(
        rewards, group_ids, cfg, num_groups=num_groups, row_mask=row_mask
    ).advantages


def batch_normalized_advantages(
    rewards: jax.Array,
    *,
    row_mask: jax.Array | None = None,
    std_ddof: int = 1,
    eps: float = 1e-6,
) -> jax.Array:
    """``[B]`` advantages ``(r - mean_B) / (std_B + eps)`` over the valid rows of the batch."""
    cfg = AdvantageConfig(estimator="batch_norm", std_ddof=std_ddof, eps=eps)
    group_ids = jnp.zeros(rewards.shape, jnp.int32)
    return compute_advantages(rewards, group_ids, cfg, num_groups=1, row_mask=row_mask).advantages


def constant_groups(
    rewards: jax.Array,
    group_ids: jax.Array,
    *,
    num_groups: int | None = None,
    row_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """DAPO dynamic-sampling report.

    Returns:
      ``(num_constant_groups, nonconstant_row_mask)``: an int32 scalar counting non-empty groups
      whose rewards are all equal, and a ``[B]`` bool mask of valid rows in the other groups.
    """
    valid = _row_mask(rewards, row_mask)
    stats = group_stats(rewards, group_ids, num_groups=num_groups, row_mask=valid, std_ddof=0)
    return (
        jnp.sum(stats.is_constant).astype(jnp.int32),
        valid & ~stats.is_constant[group_ids.astype(jnp.int32)],
    )


def token_advantages(advantages: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Broadcasts ``[B]`` sequence advantages to ``[B, T]`` tokens, zero where ``loss_mask`` is 0.

    Accepts already per-token ``[B, T]`` advantages too (they are only masked).
    """
    mask = loss_mask.astype(jnp.float32)
    advantages = advantages.astype(jnp.float32)
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    return jnp.broadcast_to(advantages, mask.shape) * mask
