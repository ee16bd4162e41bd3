"""PPO with a learned critic: token-level rewards, GAE, the clipped value loss and its metrics.

Layout (the convention of :mod:`toolrl_jax.rl.train_step`): every array is ``[B, T]`` and aligned
with ``tokens``; entry ``[b, t]`` is about token ``t`` given ``tokens[b, :t]``. Token ``t`` with
``loss_mask[b, t] == 1`` is an *action* (a generated token); the *state* before it is the prefix
``tokens[b, :t]`` and ``values[b, t] = V(tokens[b, :t])`` is the critic's estimate there (the
value head applied to the hidden state at ``t - 1``, see :mod:`toolrl_jax.models.value_head`).
So ``values`` is ``[B, T]`` like the rewards, not ``[B, T + 1]``: the value after the last action
of a row is 0 (the episode ends there: EOS, a stop, or truncation, which verl also treats as
terminal).

Token-level rewards (released ToolRL = verl ``use_kl_in_reward``)::

    r[b, t] = R_b * [t == last action of row b] - beta * m[b, t] * kl(old_logp, ref_logp)[b, t]

With per-turn rewards (``algo.gae.turn_reward_coef = c > 0``; FTRL, BFCL multi-turn) each turn
also carries its own reward on its last action (:func:`token_rewards_from_turns`)::

    r[b, t] += c * r_{b,k}   for t = last action of turn k (turns with turn_mask[b, k] only)

so the critic learns values that see the sub-goals already reached, and GAE spreads each turn's
reward over the actions before it (PPO's answer to per-turn credit, with ``turn_grpo`` the
critic-free one).

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation", arXiv 1506.02438) over the *actions only*: observation / prompt / padding tokens
(mask 0) are skipped, exactly as verl's ``compute_gae_advantage_return`` does for multi-turn
rollouts (its "skip values and TD-error on observation tokens"). With ``a_1 < a_2 < ... < a_n``
the action positions of a row::

    delta_j = r[a_j] + gamma * V[a_{j+1}] - V[a_j]          (V[a_{n+1}] = 0)
    A[a_j]  = delta_j + gamma * lam * A[a_{j+1}]             (A[a_{n+1}] = 0)
    R[a_j]  = A[a_j] + V[a_j]                                (returns, the critic's target)

so the last action of turn ``k`` bootstraps from the first action of turn ``k + 1`` across the
observation between them, and a reward written on a mask-0 token is ignored. ``A`` and ``R`` are
0 on mask-0 tokens (verl leaves the carried value there; it is masked out of every loss anyway).
Optionally the advantages are whitened over all actions of the batch (verl's ``masked_whiten``:
``(A - mean) / sqrt(var_unbiased + 1e-8)``); compute GAE on the whole rollout batch, before
splitting into mini-batches.

Value loss (PPO's clipped value loss, as in verl ``compute_value_loss`` / TRL)::

    V_clip = clip(V, V_old - c, V_old + c)
    L_V    = 0.5 * sum_t m * max((V - R)^2, (V_clip - R)^2) / sum_t m       (token-mean)
    clip_frac = mean_m[(V_clip - R)^2 > (V - R)^2]
    explained_variance = 1 - Var_m(R - V) / (Var_m(R) + 1e-5)              (unbiased Var)
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import NamedTuple

import jax
import jax.numpy as jnp

from toolrl_jax.errors import ConfigError
from toolrl_jax.rl.advantages import ESTIMATORS, CreditInputs, TokenEstimator
from toolrl_jax.rl.losses import KLEstimator, kl_penalty


@dataclasses.dataclass(frozen=True, kw_only=True)
class GAEConfig:
    """GAE and value-loss settings (defaults: verl's PPO defaults, which released ToolRL uses).

    Attributes:
      gamma: discount per action token (1.0).
      lam: GAE lambda (1.0 = Monte-Carlo returns minus the baseline).
      whiten: whiten the advantages over the batch's actions (verl: always for GAE).
      vf_clip: value clip range ``c`` around the rollout-time values (verl
        ``critic.cliprange_value`` 0.5); None = unclipped squared error.
      kl_coef: ``beta`` of the per-token KL penalty in the token rewards (verl
        ``algorithm.use_kl_in_reward`` with ``kl_ctrl.kl_coef``; released ToolRL: 0.001). It is
        not the KL *loss* ``algo.loss.kl_coef``: the two are separate, as in verl. 0 = off.
      kl_estimator: estimator of that per-token KL (verl ``algorithm.kl_penalty``; ``k1``).
      turn_reward_coef: ``c``: each assistant turn's own reward (the reward components that
        score turns) times ``c`` on the turn's last action, on top of the outcome reward on the
        row's last action. 0 (default) = outcome only.
    """

    gamma: float = 1.0
    lam: float = 1.0
    whiten: bool = True
    vf_clip: float | None = 0.5
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k1"
    turn_reward_coef: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"algo.gae.gamma: must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"algo.gae.lam: must be in [0, 1], got {self.lam}")
        if self.vf_clip is not None and not self.vf_clip > 0:
            raise ConfigError(f"algo.gae.vf_clip: must be > 0 or null, got {self.vf_clip}")
        if not self.kl_coef >= 0:
            raise ConfigError(f"algo.gae.kl_coef: must be >= 0, got {self.kl_coef}")
        if not self.turn_reward_coef >= 0:
            raise ConfigError(f"algo.gae.turn_reward_coef: must be >= 0, got "
                              f"{self.turn_reward_coef}")
        if self.kl_estimator not in typing.get_args(KLEstimator):
            raise ConfigError(f"algo.gae.kl_estimator: {self.kl_estimator!r} is not one of "
                              f"{', '.join(typing.get_args(KLEstimator))}")


class GAEOutput(NamedTuple):
    """``advantages`` and ``returns`` ``[B, T]`` float32, 0 on mask-0 tokens."""

    advantages: jax.Array
    returns: jax.Array


def last_action_index(loss_mask: jax.Array) -> jax.Array:
    """``[B]`` int32 index of the last token with ``loss_mask == 1`` in each row (-1 if none)."""
    t = loss_mask.shape[-1]
    idx = jnp.arange(t, dtype=jnp.int32)[None, :]
    return jnp.max(jnp.where(loss_mask.astype(bool), idx, -1), axis=-1)


def token_rewards(
    sequence_rewards: jax.Array,
    loss_mask: jax.Array,
    *,
    old_logprobs: jax.Array | None = None,
    ref_logprobs: jax.Array | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k1",
) -> jax.Array:
    """Token-level rewards ``[B, T]``: ``R_b`` on the last action, minus the per-token KL penalty.

    ``r[b, t] = R_b [t = last action of b] - kl_coef * m[b, t] * kl_t`` with
    ``kl_t = kl_penalty(old_logprobs, ref_logprobs, kl_estimator)`` (verl ``apply_kl_penalty``:
    the rollout policy's log-probs against the reference; released ToolRL: ``k1``, 0.001). A row
    without any action gets no reward (it has no token to carry it).
    """
    mask = loss_mask.astype(jnp.float32)
    last = last_action_index(loss_mask)
    cols = jnp.arange(mask.shape[-1], dtype=jnp.int32)[None, :]
    out = jnp.where(cols == last[:, None], sequence_rewards.astype(jnp.float32)[:, None], 0.0)
    if kl_coef:
        if old_logprobs is None or ref_logprobs is None:
            raise ValueError("token_rewards: kl_coef > 0 needs old_logprobs and ref_logprobs")
        out = out - kl_coef * kl_penalty(old_logprobs, ref_logprobs, kl_estimator) * mask
    return out


def token_rewards_from_turns(
    turn_rewards: jax.Array, token_turn: jax.Array, turn_mask: jax.Array | None = None
) -> jax.Array:
    """Per-turn rewards ``[B, K]`` placed on the last action token of each turn -> ``[B, T]``.

    ``token_turn [B, T]`` int32 is the turn index of each generated token, -1 elsewhere
    (:func:`toolrl_jax.rl.turn_advantages.token_turn_index`). A turn with ``turn_mask`` False, or
    without tokens, contributes nothing. Add the KL term with :func:`token_rewards` (reward 0).
    """
    token_turn = jnp.asarray(token_turn, jnp.int32)
    b, t = token_turn.shape
    k = turn_rewards.shape[-1]
    nxt = jnp.concatenate([token_turn[:, 1:], jnp.full((b, 1), -1, token_turn.dtype)], axis=1)
    is_last = (token_turn >= 0) & (nxt != token_turn)
    safe = jnp.clip(token_turn, 0, k - 1)
    r = jnp.take_along_axis(turn_rewards.astype(jnp.float32), safe, axis=1)
    if turn_mask is not None:
        is_last = is_last & jnp.take_along_axis(turn_mask.astype(bool), safe, axis=1)
    return jnp.where(is_last, r, 0.0)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(jnp.float32)
    return jnp.sum(x * m) / (jnp.sum(m) + 1e-8)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Unbiased variance over ``mask`` (``n / (n - 1)`` Bessel factor; 0 when ``n <= 1``)."""
    m = mask.astype(jnp.float32)
    n = jnp.sum(m)
    var = masked_mean(jnp.square(x - masked_mean(x, m)), m)
    return jnp.where(n > 1, var * n / jnp.maximum(n - 1.0, 1.0), 0.0)


def masked_whiten(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``(x - mean_m) / sqrt(var_m + 1e-8)`` (verl ``masked_whiten``), 0 on mask-0 entries."""
    m = mask.astype(jnp.float32)
    return (x - masked_mean(x, m)) * jax.lax.rsqrt(masked_var(x, m) + 1e-8) * m


def _gae_scan(rewards, values, mask, gamma, lam):
    def step(carry, xs):
        next_value, next_adv = carry
        r, v, m = xs
        delta = r + gamma * next_value - v
        adv = delta + gamma * lam * next_adv
        keep = m > 0
        carry = (jnp.where(keep, v, next_value), jnp.where(keep, adv, next_adv))
        return carry, jnp.where(keep, adv, 0.0)

    zeros = jnp.zeros(rewards.shape[0], jnp.float32)
    _, adv_t = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True)
    return adv_t.T


@jax.jit
def _gae(rewards, values, mask, gamma, lam):
    return _gae_scan(rewards, values, mask, gamma, lam)


def compute_gae(
    token_level_rewards: jax.Array,
    values: jax.Array,
    loss_mask: jax.Array,
    config: GAEConfig = GAEConfig(),
) -> GAEOutput:
    """GAE advantages and returns ``[B, T]`` over the actions of each row (module docstring).

    Args:
      token_level_rewards: ``[B, T]`` (:func:`token_rewards`); entries on mask-0 tokens ignored.
      values: ``[B, T]`` rollout-time critic values, ``values[b, t] = V(tokens[b, :t])``.
      loss_mask: ``[B, T]``, 1 on actions (generated tokens); holes (observations) are skipped.
      config: :class:`GAEConfig` (``gamma``, ``lam``, ``whiten``).

    Returns:
      :class:`GAEOutput`; ``returns`` are never whitened (they are the critic's regression
      target). Jitted (``gamma`` / ``lam`` are traced, so changing them does not recompile).
    """
    mask = loss_mask.astype(jnp.float32)
    rewards = token_level_rewards.astype(jnp.float32)
    vals = values.astype(jnp.float32)
    adv = _gae(rewards, vals, mask, jnp.float32(config.gamma), jnp.float32(config.lam))
    returns = (adv + vals) * mask
    if config.whiten:
        adv = masked_whiten(adv, mask)
    return GAEOutput(advantages=adv, returns=returns)


class ValueLossTerms(NamedTuple):
    """Summable pieces of the value loss of a (micro-)batch.

    Attributes:
      numerator: ``0.5 * sum m * max(l1, l2)`` (differentiable); the loss is
        ``numerator / sum(m)`` over the whole batch (token-mean, verl's critic default).
      sums: stop-gradient scalar sums ``vf_loss`` (= numerator), ``vf_clip_frac``,
        ``value_mean``, ``return_mean``, ``num_tokens`` (divide by the total ``num_tokens``).
    """

    numerator: jax.Array
    sums: dict[str, jax.Array]


def value_loss_terms(
    values: jax.Array,
    returns: jax.Array,
    loss_mask: jax.Array,
    *,
    old_values: jax.Array | None = None,
    vf_clip: float | None = 0.5,
) -> ValueLossTerms:
    """Clipped value loss (module docstring) as a numerator plus metric sums.

    ``values`` are the critic's current predictions (differentiable), ``old_values`` the values
    at rollout time (None = no clipping), ``returns`` the GAE returns.
    """
    m = loss_mask.astype(jnp.float32)
    v = values.astype(jnp.float32)
    ret = returns.astype(jnp.float32)
    l1 = jnp.square(v - ret)
    if vf_clip is None or old_values is None:
        per_token, clipped = l1, jnp.zeros_like(l1)
    else:
        old = old_values.astype(jnp.float32)
        l2 = jnp.square(jnp.clip(v, old - vf_clip, old + vf_clip) - ret)
        per_token, clipped = jnp.maximum(l1, l2), (l2 > l1).astype(jnp.float32)
    numerator = 0.5 * jnp.sum(per_token * m)
    sg = jax.lax.stop_gradient
    sums = {
        "vf_loss": sg(numerator),
        "vf_clip_frac": sg(jnp.sum(clipped * m)),
        "value_mean": sg(jnp.sum(v * m)),
        "return_mean": sg(jnp.sum(ret * m)),
        "num_tokens": jnp.sum(m),
    }
    return ValueLossTerms(numerator=numerator, sums=sums)


def value_loss(
    values: jax.Array,
    returns: jax.Array,
    loss_mask: jax.Array,
    *,
    old_values: jax.Array | None = None,
    vf_clip: float | None = 0.5,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(loss, metrics)`` of one whole batch: token-mean clipped value loss, clip fraction,
    value / return means and the explained variance of ``returns`` by ``values``."""
    terms = value_loss_terms(values, returns, loss_mask, old_values=old_values, vf_clip=vf_clip)
    n = jnp.maximum(terms.sums["num_tokens"], 1.0)
    metrics = {k: (v if k == "num_tokens" else v / n) for k, v in terms.sums.items()}
    metrics["explained_variance"] = explained_variance(
        returns, jax.lax.stop_gradient(values), loss_mask
    )
    return terms.numerator / n, metrics


def explained_variance(returns: jax.Array, values: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """``1 - Var_m(R - V) / (Var_m(R) + 1e-5)`` over the actions (verl's ``vf_explained_var``)."""
    r = returns.astype(jnp.float32)
    return 1.0 - masked_var(r - values.astype(jnp.float32), loss_mask) / (
        masked_var(r, loss_mask) + 1e-5
    )


def gae_metrics(out: GAEOutput, values: jax.Array, loss_mask: jax.Array) -> dict[str, jax.Array]:
    """Scalar logging metrics of a rollout batch: advantage / return / value means and the
    explained variance of the returns by the rollout-time values."""
    return {
        "advantage_mean": masked_mean(out.advantages, loss_mask),
        "return_mean": masked_mean(out.returns, loss_mask),
        "value_mean": masked_mean(values.astype(jnp.float32), loss_mask),
        "explained_variance": explained_variance(out.returns, values, loss_mask),
    }


# --------------------------------------------------------------------------- the estimator


@functools.partial(jax.jit, static_argnames=("config",))
def _gae_of_rollout(rewards, loss_mask, values, old_logprobs, ref_logprobs, turn_rewards,
                    token_turn, turn_mask, config: GAEConfig):
    r = token_rewards(rewards, loss_mask, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                      kl_coef=config.kl_coef, kl_estimator=config.kl_estimator)
    if turn_rewards is not None:
        per_turn = token_rewards_from_turns(turn_rewards, token_turn, turn_mask)
        r = r + config.turn_reward_coef * per_turn * loss_mask
    return compute_gae(r, values, loss_mask, config)


def gae_from_credit(inputs: CreditInputs) -> GAEOutput:
    """GAE advantages and returns ``[B, T]`` of a rollout batch (the ``gae`` estimator).

    Token rewards (:func:`token_rewards`): each row's outcome reward on its last action minus
    ``algo.gae.kl_coef`` x the per-token KL of ``old_logprobs`` to ``ref_logprobs``, plus
    ``algo.gae.turn_reward_coef`` x each turn's reward on the turn's last action; then
    :func:`compute_gae` with the rollout-time ``values`` and ``algo.gae``. Jitted with the
    config static; pass ``[B, T]`` arrays of one fixed ``T`` (the padded batch) to compile once.
    """
    g: GAEConfig = inputs.algo.gae
    if inputs.values is None:
        raise ValueError("the gae estimator needs critic values (CreditInputs.values)")
    kl = g.kl_coef > 0
    if kl and (inputs.old_logprobs is None or inputs.ref_logprobs is None):
        raise ValueError("algo.gae.kl_coef > 0 needs old_logprobs and ref_logprobs")
    turns = g.turn_reward_coef > 0
    if turns and (inputs.turn_rewards is None or inputs.turn_mask is None):
        raise ValueError("algo.gae.turn_reward_coef > 0 needs per-turn rewards "
                         "(a reward component that scores turns)")
    return _gae_of_rollout(
        jnp.asarray(inputs.rewards, jnp.float32), jnp.asarray(inputs.loss_mask, jnp.float32),
        jnp.asarray(inputs.values, jnp.float32),
        inputs.old_logprobs if kl else None, inputs.ref_logprobs if kl else None,
        jnp.asarray(inputs.turn_rewards, jnp.float32) if turns else None,
        jnp.asarray(inputs.token_turn, jnp.int32) if turns else None,
        jnp.asarray(inputs.turn_mask, bool) if turns else None, g)


#: ``algo.advantage.estimator: gae``: PPO with a learned critic (per-token GAE advantages).
ESTIMATORS.register("gae")(TokenEstimator(
    lambda x: gae_from_credit(x).advantages, needs_values=True,
    needs_turn_rewards=lambda algo: algo.gae.turn_reward_coef > 0))
