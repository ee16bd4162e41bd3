"""Clipped policy-gradient loss, KL to a reference, entropy bonus and loss aggregation.

Shapes: ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``sample_logprobs``, ``entropy`` and
``loss_mask`` are ``[B, T]`` (per target token); ``advantages`` is ``[B]`` or ``[B, T]``.

Per-token terms (PPO, Schulman et al. 2017; GRPO, Shao et al. 2024):

* ratio ``rho = exp(logp - old_logp)``;
* ``pg = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))``; asymmetric clip
  ``eps_high > eps_low`` is DAPO's clip-higher (arXiv 2503.14476);
* dual clip (Ye et al. 2020, arXiv 1912.09729), for ``A < 0`` only: ``pg = min(pg, -c A)``;
* truncated importance sampling against the sampler (rollout / trainer mismatch, Yao et al. 2025
  "Your efficient RL framework secretly brings you off-policy RL training"):
  ``pg *= stop_grad(min(exp(old_logp - sample_logp), C))``;
* KL to the reference policy, samples from the current policy, ``d = logp - ref_logp``:
  ``k1 = d``, ``k2 = d^2 / 2``, ``k3 = exp(-d) + d - 1`` (Schulman 2020, "Approximating KL");
* ``l_t = pg_t + beta * kl_t - alpha * H_t`` (entropy bonus ``alpha``).

Aggregation. Each mode is written as ``loss = sum_{b,t} w_{b,t} l_{b,t} / D`` where the weight
``w`` of a token depends only on its own row and ``D`` depends only on the loss mask of the whole
batch. Micro-batches of rows therefore sum their numerators ``sum w l`` and divide once by the
global ``D`` (computed before splitting), which is exactly the one-big-batch loss:

=============================  =================================  ================================
mode                           ``w_{b,t}``                        ``D``
=============================  =================================  ================================
``token-mean``                 ``m_{b,t}``                        ``sum_{b,t} m_{b,t}``
``seq-mean-token-mean``        ``m_{b,t} / sum_t m_{b,t}``        rows with at least one loss token
``seq-mean-token-sum-norm``    ``m_{b,t} / C`` (C = norm const)   rows with at least one loss token
=============================  =================================  ================================

``token-mean`` is DAPO / released ToolRL; ``seq-mean-token-mean`` is the GRPO paper's
``1/G sum_i 1/|o_i| sum_t``; ``seq-mean-token-sum-norm`` is Dr. GRPO's constant normaliser
(``C`` defaults to ``T``, the padded response length; verl divides the token sum by ``C`` only,
which differs from this by the constant factor ``D``). Rows whose mask is all zero (padding)
contribute nothing and are not counted in ``D``.

Packed rows. With ``segment_ids`` ``[B, T]`` (several sequences per row, 0 = padding; see
``train.batch.pack_rows``) a *sequence* is a (row, segment) pair rather than a row: ``sum_t
m_{b,t}`` above becomes the sum over the token's own segment and ``D`` counts segments with a
loss token, so a packed batch has the loss of the same sequences padded one per row.

Metrics are also returned as sums with their own denominators so they accumulate exactly:
token-level metrics are mask-weighted sums divided by the total token count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from toolrl_jax.errors import ConfigError

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


def _acc_dtype(dtype) -> jnp.dtype:
    """float32 (float64 only for float64 inputs with x64 enabled, as in gradient tests)."""
    return jnp.promote_types(jax.dtypes.canonicalize_dtype(dtype), jnp.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Policy-loss settings (defaults: released ToolRL GRPO without the entropy bonus).

    Attributes:
      clip_eps_low: lower clip ``1 - eps_low`` of the ratio (0.2).
      clip_eps_high: upper clip ``1 + eps_high`` (0.2; DAPO uses 0.28).
      dual_clip_c: dual-clip constant ``c > 1`` for negative advantages, or None (off).
      kl_coef: ``beta`` of the KL-to-reference term in the loss (0 = off, no reference model).
      kl_estimator: ``k1``, ``k2`` or ``k3`` for the in-loss KL.
      entropy_coef: ``alpha`` of the entropy bonus (ToolRL: 0.001).
      aggregation: ``token-mean``, ``seq-mean-token-mean`` or ``seq-mean-token-sum-norm``.
      norm_constant: divisor ``C`` of ``seq-mean-token-sum-norm`` (None = padded length T).
      tis_cap: cap ``C`` of truncated importance weights ``min(exp(old - sample), C)`` against
        the sampler's log-probs, or None (off; mismatch metrics are still logged when the
        sampler's log-probs are given).
      ratio_level: ``token`` (PPO/GRPO: one ratio per token) or ``sequence`` (GSPO, arXiv
        2507.18071: the length-normalised sequence ratio, clipped per sequence; see
        :mod:`toolrl_jax.rl.gspo`, which also gives the paper's clip ranges).
    """

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip_c: float | None = None
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    entropy_coef: float = 0.0
    aggregation: Aggregation = "token-mean"
    norm_constant: float | None = None
    tis_cap: float | None = None
    ratio_level: Literal["token", "sequence"] = "token"

    def __post_init__(self) -> None:
        if not (0.0 <= self.clip_eps_low < 1.0):
            raise ConfigError(f"loss.clip_eps_low: must be in [0, 1), got {self.clip_eps_low}")
        if not self.clip_eps_high >= 0.0:
            raise ConfigError(f"loss.clip_eps_high: must be >= 0, got {self.clip_eps_high}")
        if self.dual_clip_c is not None and not self.dual_clip_c > 1.0:
            raise ConfigError(f"loss.dual_clip_c: must be > 1 or null, got {self.dual_clip_c}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"loss.kl_estimator: {self.kl_estimator!r} is not one of k1, k2, k3")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"loss.aggregation: {self.aggregation!r} is not one of {', '.join(AGGREGATIONS)}"
            )
        if self.norm_constant is not None and not self.norm_constant > 0:
            raise ConfigError(f"loss.norm_constant: must be > 0 or null, got {self.norm_constant}")
        if self.tis_cap is not None and not self.tis_cap > 0:
            raise ConfigError(f"loss.tis_cap: must be > 0 or null, got {self.tis_cap}")
        if self.ratio_level not in ("token", "sequence"):
            raise ConfigError(f"loss.ratio_level: {self.ratio_level!r} is not token or sequence")
        if self.kl_coef < 0 or self.entropy_coef < 0:
            raise ConfigError("loss.kl_coef and loss.entropy_coef must be >= 0")


def kl_penalty(
    logprobs: jax.Array, ref_logprobs: jax.Array, estimator: KLEstimator = "k3"
) -> jax.Array:
    """Per-token KL(pi || ref) estimate for tokens sampled from pi; ``[B, T]``.

    ``d = logprobs - ref_logprobs``; ``k1 = d``; ``k2 = d^2/2``; ``k3 = exp(-d) + d - 1``.
    """
    dtype = _acc_dtype(logprobs.dtype)
    d = logprobs.astype(dtype) - ref_logprobs.astype(dtype)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return jnp.exp(-d) + d - 1.0
    raise ConfigError(f"kl_estimator: {estimator!r} is not one of k1, k2, k3")


def kl_in_reward(
    rewards: jax.Array,
    logprobs: jax.Array,
    ref_logprobs: jax.Array,
    loss_mask: jax.Array,
    *,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> tuple[jax.Array, jax.Array]:
    """Applies the KL penalty in the reward (released ToolRL / verl ``use_kl_in_reward``).

    verl subtracts ``beta * kl_t`` from the token-level rewards; GRPO then sums them over the
    response, so the sequence reward becomes ``r_b - beta * sum_t m_{b,t} kl_{b,t}``. Released
    ToolRL uses ``beta = 0.001`` with the ``k1`` estimator on the rollout policy's log-probs
    (``old_logprobs``). Apply before :func:`~toolrl_jax.rl.advantages.compute_advantages`.

    Returns:
      ``(penalised_rewards [B], mean_token_kl scalar)``.
    """
    mask = loss_mask.astype(jnp.float32)
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * mask
    penalised = rewards.astype(jnp.float32) - kl_coef * jnp.sum(kl, axis=-1)
    return penalised, jnp.sum(kl) / jnp.maximum(jnp.sum(mask), 1.0)


def _sequence_index(mask: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """``[B, T]`` flat id of each token's (row, segment) sequence, ``b * (T + 1) + segment``."""
    b, t = mask.shape
    return jnp.arange(b, dtype=jnp.int32)[:, None] * (t + 1) + segment_ids.astype(jnp.int32)


def _sequence_totals(mask: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """Loss tokens per sequence: ``[B, 1]`` per row, or ``[B * (T + 1)]`` per (row, segment)
    with padding (segment 0) left out."""
    if segment_ids is None:
        return jnp.sum(mask, axis=-1, keepdims=True)
    kept = jnp.where(segment_ids != 0, mask, 0.0)
    return jax.ops.segment_sum(kept.ravel(), _sequence_index(mask, segment_ids).ravel(),
                               num_segments=mask.size + mask.shape[0])


def aggregation_weights(
    loss_mask: jax.Array, aggregation: Aggregation, norm_constant: float | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Per-token weights ``w [B, T]`` of the aggregation (see the module table); with
    ``segment_ids`` the sequences are the packed segments."""
    mask = loss_mask.astype(_acc_dtype(loss_mask.dtype))
    if aggregation == "token-mean":
        return mask
    if aggregation == "seq-mean-token-mean":
        totals = _sequence_totals(mask, segment_ids)
        if segment_ids is not None:
            totals = totals[_sequence_index(mask, segment_ids)]
        return mask / jnp.maximum(totals, 1.0)
    if aggregation == "seq-mean-token-sum-norm":
        c = float(mask.shape[-1]) if norm_constant is None else float(norm_constant)
        return mask / c
    raise ConfigError(f"loss.aggregation: {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")


def aggregation_denominator(loss_mask: jax.Array, aggregation: Aggregation,
                            segment_ids: jax.Array | None = None) -> jax.Array:
    """Global denominator ``D`` (float32 scalar) of the aggregation; compute on the whole batch
    (with ``segment_ids``: sequences are the packed segments)."""
    mask = loss_mask.astype(_acc_dtype(loss_mask.dtype))
    if aggregation == "token-mean":
        return jnp.sum(mask)
    if aggregation in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        return jnp.sum((_sequence_totals(mask, segment_ids) > 0).astype(mask.dtype))
    raise ConfigError(f"loss.aggregation: {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")


class LossTerms(NamedTuple):
    """Summable pieces of the loss of a (micro-)batch.

    Attributes:
      numerator: ``sum w l`` (differentiable); the loss is ``numerator / D``.
      loss_sums: scalars ``pg_loss``, ``kl_loss``, ``entropy_loss``, ``loss`` weighted like the
        numerator (divide by ``D``).
      token_sums: mask-weighted scalar sums of token metrics plus ``num_tokens`` (divide by the
        total ``num_tokens``).
    """

    numerator: jax.Array
    loss_sums: dict[str, jax.Array]
    token_sums: dict[str, jax.Array]


#: Cap on GSPO's ``log s_i`` before ``exp`` (verl's ``compute_policy_loss_gspo``).
LOG_RATIO_CAP = 10.0


def sequence_log_ratio(
    logprobs: jax.Array, old_logprobs: jax.Array, loss_mask: jax.Array
) -> jax.Array:
    """GSPO's ``[B]`` ``log s_i = sum_t m (logp - old) / max(sum_t m, 1)``, capped at
    ``LOG_RATIO_CAP`` (Zheng et al., arXiv 2507.18071)."""
    f32 = jnp.promote_types(logprobs.dtype, jnp.float32)
    m = loss_mask.astype(f32)
    d = (logprobs.astype(f32) - old_logprobs.astype(f32)) * m
    mean = jnp.sum(d, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    return jnp.minimum(mean, LOG_RATIO_CAP)


def sequence_ratio(logprobs: jax.Array, old_logprobs: jax.Array, loss_mask: jax.Array, *,
                   token_level: bool) -> jax.Array:
    """``[B, T]`` GSPO ratio: ``s_i`` broadcast to the tokens (sequence advantages), or
    GSPO-token's ``s_it = sg(s_i) * pi(y_t) / sg(pi(y_t))`` (per-token advantages)."""
    log_s = sequence_log_ratio(logprobs, old_logprobs, loss_mask)
    if not token_level:
        return jnp.broadcast_to(jnp.exp(log_s)[:, None], logprobs.shape)
    sg = jax.lax.stop_gradient
    return jnp.exp(sg(log_s)[:, None] + logprobs - sg(logprobs))


def policy_loss_terms(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    loss_mask: jax.Array,
    config: LossConfig = LossConfig(),
    *,
    ref_logprobs: jax.Array | None = None,
    entropy: jax.Array | None = None,
    sample_logprobs: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> LossTerms:
    """Numerator and metric sums of the policy loss for one (micro-)batch.

    Args:
      logprobs: ``[B, T]`` current policy log-probs of the target tokens (differentiable).
      old_logprobs: ``[B, T]`` log-probs of the policy that produced the rollout (for PPO
        mini-batches: the parameters before the first update of this rollout batch).
      advantages: ``[B]`` or ``[B, T]``.
      loss_mask: ``[B, T]``, 1 on generated tokens that are trained on.
      config: :class:`LossConfig`.
      ref_logprobs: ``[B, T]`` reference-policy log-probs; required when ``config.kl_coef > 0``.
      entropy: ``[B, T]`` policy entropy per position (differentiable); required when
        ``config.entropy_coef > 0``; logged when given.
      sample_logprobs: ``[B, T]`` log-probs reported by the sampler, for truncated importance
        sampling (``config.tis_cap``) and the mismatch metrics.
      segment_ids: ``[B, T]`` packed sequences (0 = padding): the aggregation's sequences
        are the segments (see the module docstring). GSPO's sequence ratio needs one sequence
        per row (``ratio_level: sequence`` refuses packed rows at config time).

    Returns:
      :class:`LossTerms`.
    """
    f32 = _acc_dtype(logprobs.dtype)  # float64 only in x64 tests
    mask = loss_mask.astype(f32)
    logprobs = logprobs.astype(f32)
    old_logprobs = old_logprobs.astype(f32)
    adv = advantages.astype(f32)
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = jnp.broadcast_to(adv, mask.shape)
    sg = jax.lax.stop_gradient

    log_ratio = logprobs - old_logprobs
    if config.ratio_level == "sequence":  # GSPO: one length-normalised ratio per sequence
        ratio = sequence_ratio(logprobs, old_logprobs, mask, token_level=advantages.ndim == 2)
    else:
        ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - config.clip_eps_low, 1.0 + config.clip_eps_high)
    pg = jnp.maximum(pg1, pg2)
    clipped = (pg2 > pg1).astype(f32)
    dual_clipped = jnp.zeros_like(mask)
    if config.dual_clip_c is not None:
        pg3 = -adv * config.dual_clip_c
        dual_clipped = ((adv < 0) & (pg3 < pg)).astype(f32)
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)

    token_sums: dict[str, jax.Array] = {}
    if sample_logprobs is not None:
        sample_logprobs = sample_logprobs.astype(f32)
        mismatch = old_logprobs - sample_logprobs  # log(pi_old / pi_sampler)
        token_sums["mismatch_abs_logp"] = jnp.sum(jnp.abs(mismatch) * mask)
        token_sums["mismatch_kl_k1"] = jnp.sum(-mismatch * mask)  # KL(sampler || old)
        token_sums["mismatch_kl_k3"] = jnp.sum((jnp.exp(mismatch) - mismatch - 1.0) * mask)
        if config.tis_cap is not None:
            tis_w = sg(jnp.minimum(jnp.exp(mismatch), config.tis_cap))
            pg = pg * tis_w
            token_sums["tis_weight"] = jnp.sum(tis_w * mask)
            token_sums["tis_capped_frac"] = jnp.sum(
                (jnp.exp(mismatch) > config.tis_cap).astype(f32) * mask
            )
    elif config.tis_cap is not None:
        raise ValueError("loss.tis_cap is set but the batch has no sample_logprobs")

    per_token = pg
    w = aggregation_weights(mask, config.aggregation, config.norm_constant, segment_ids)
    loss_sums = {"pg_loss": jnp.sum(w * pg)}
    if config.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("loss.kl_coef > 0 but the batch has no ref_logprobs")
        kl = kl_penalty(logprobs, ref_logprobs, config.kl_estimator)
        per_token = per_token + config.kl_coef * kl
        loss_sums["kl_loss"] = jnp.sum(w * kl)
        token_sums["ref_kl"] = jnp.sum(kl * mask)
    elif ref_logprobs is not None:
        ref_kl = kl_penalty(logprobs, ref_logprobs, config.kl_estimator)
        token_sums["ref_kl"] = jnp.sum(ref_kl * mask)
    if config.entropy_coef > 0:
        if entropy is None:
            raise ValueError("loss.entropy_coef > 0 but no entropy was computed")
        per_token = per_token - config.entropy_coef * entropy.astype(f32)
        loss_sums["entropy_loss"] = jnp.sum(w * entropy.astype(f32))
    if entropy is not None:
        token_sums["entropy"] = jnp.sum(entropy.astype(f32) * mask)

    numerator = jnp.sum(w * per_token)
    loss_sums["loss"] = numerator
    token_sums.update(
        clip_frac=jnp.sum(clipped * mask),
        dual_clip_frac=jnp.sum(dual_clipped * mask),
        approx_kl=jnp.sum((jnp.exp(log_ratio) - 1.0 - log_ratio) * mask),  # k3 of KL(old || new)
        ppo_kl=jnp.sum(-log_ratio * mask),  # k1, as verl logs it
        ratio_mean=jnp.sum(ratio * mask),
        advantage_mean=jnp.sum(adv * mask),
        num_tokens=jnp.sum(mask),
    )
    loss_sums = {k: sg(v) for k, v in loss_sums.items()}
    token_sums = {k: sg(v) for k, v in token_sums.items()}
    return LossTerms(numerator=numerator, loss_sums=loss_sums, token_sums=token_sums)


def finalize_metrics(
    loss_sums: Mapping[str, jax.Array],
    token_sums: Mapping[str, jax.Array],
    denominator: jax.Array,
) -> dict[str, jax.Array]:
    """Turns (accumulated) sums into means: loss terms / ``D``, token metrics / ``num_tokens``."""
    d = jnp.maximum(denominator, 1e-20)
    n = jnp.maximum(token_sums["num_tokens"], 1.0)
    out = {k: v / d for k, v in loss_sums.items()}
    for k, v in token_sums.items():
        out[k] = v if k == "num_tokens" else v / n
    return out


def policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    loss_mask: jax.Array,
    config: LossConfig = LossConfig(),
    *,
    ref_logprobs: jax.Array | None = None,
    entropy: jax.Array | None = None,
    sample_logprobs: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss and metrics of one whole batch: ``policy_loss_terms(...).numerator / D``.

    ``D`` is :func:`aggregation_denominator` of ``loss_mask`` (a batch with no loss token has
    loss 0). Metrics: ``loss``, ``pg_loss``, ``kl_loss``, ``entropy_loss`` (aggregated like the
    loss), and token means ``clip_frac``, ``dual_clip_frac``, ``approx_kl``, ``ppo_kl``,
    ``ratio_mean``, ``entropy``, ``ref_kl``, ``tis_weight``, ``mismatch_*``, plus ``num_tokens``.
    """
    terms = policy_loss_terms(
        logprobs,
        old_logprobs,
        advantages,
        loss_mask,
        config,
        ref_logprobs=ref_logprobs,
        entropy=entropy,
        sample_logprobs=sample_logprobs,
        segment_ids=segment_ids,
    )
    denom = aggregation_denominator(loss_mask, config.aggregation, segment_ids)
    loss = terms.numerator / jnp.maximum(denom, 1e-20)
    return loss, finalize_metrics(terms.loss_sums, terms.token_sums, denom)
