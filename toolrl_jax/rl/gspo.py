"""GSPO: sequence-level importance ratio and clipping (Zheng et al. 2025, "Group Sequence Policy
Optimization", arXiv 2507.18071), as a drop-in for :func:`toolrl_jax.rl.losses.policy_loss_terms`.

Shapes as in :mod:`toolrl_jax.rl.losses`: ``logprobs``, ``old_logprobs``, ``loss_mask`` ``[B, T]``;
``advantages`` ``[B]`` (one per sequence, GSPO proper) or ``[B, T]`` (GSPO-token).

Sequence ratio (length-normalised likelihood ratio of the whole response ``y_i``)::

    s_i = (pi(y_i | x) / pi_old(y_i | x))^(1 / |y_i|)
        = exp( (1/|y_i|) sum_t m_it (logp_it - old_it) )

with ``|y_i| = sum_t m_it`` (the trained tokens of row i; multi-turn observations excluded). The
log of ``s_i`` is capped at 10 before ``exp`` (as verl does) so that no ratio overflows.

* ``advantages [B]`` (the paper's objective): per-sequence loss
  ``l_i = max(-A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high))``, written on every trained
  token of row i; with ``aggregation='seq-mean-token-mean'`` the batch loss is the paper's
  ``(1/G) sum_i l_i`` (use that; ``token-mean`` weights sequences by their length). Differentiable
  through ``s_i``: ``d s_i = s_i (1/|y_i|) sum_t m_it d logp_it``.
* ``advantages [B, T]`` (GSPO-token, paper eq. for token-level advantages, e.g. GAE or turn-level
  credit): ``s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]`` (value ``s_i``, gradient
  ``s_i d logp_it``), ``l_it = max(-A_it s_it, -A_it clip(s_it, ...))``; the clip decision is
  still the sequence's. With a constant ``A_it = A_i`` and ``seq-mean-token-mean`` it has the same
  value and gradient as the sequence form.

Dual clip (``c``, for ``A < 0``), the KL-to-reference term, the entropy bonus, truncated
importance weights against the sampler and the aggregation are applied per token exactly as in
:func:`~toolrl_jax.rl.losses.policy_loss_terms`, and the result is the same
:class:`~toolrl_jax.rl.losses.LossTerms` (numerator over the global denominator ``D``), so
micro-batching stays exact (``s_i`` depends on row i only). The paper's clip range is much
smaller than PPO's: ``eps_low = 3e-4``, ``eps_high = 4e-4`` (:func:`gspo_loss_config`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toolrl_jax.rl.losses import LossConfig, LossTerms, aggregation_weights, kl_penalty

#: GSPO paper's clipping range (Section 5.1): left 3e-4, right 4e-4.
GSPO_CLIP_EPS_LOW = 3e-4
GSPO_CLIP_EPS_HIGH = 4e-4
#: Cap on ``log s_i`` before ``exp`` (verl's ``compute_policy_loss_gspo``).
LOG_RATIO_CAP = 10.0


def gspo_loss_config(**overrides) -> LossConfig:
    """A :class:`LossConfig` with the paper's settings (clip 3e-4 / 4e-4, seq-mean-token-mean)."""
    fields = dict(clip_eps_low=GSPO_CLIP_EPS_LOW, clip_eps_high=GSPO_CLIP_EPS_HIGH,
                  aggregation="seq-mean-token-mean")
    fields.update(overrides)
    return LossConfig(**fields)


def sequence_log_ratio(
    logprobs: jax.Array, old_logprobs: jax.Array, loss_mask: jax.Array
) -> jax.Array:
    """``[B]`` ``log s_i = sum_t m (logp - old) / max(sum_t m, 1)`` capped at ``LOG_RATIO_CAP``."""
    f32 = jnp.promote_types(logprobs.dtype, jnp.float32)
    m = loss_mask.astype(f32)
    d = (logprobs.astype(f32) - old_logprobs.astype(f32)) * m
    mean = jnp.sum(d, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    return jnp.minimum(mean, LOG_RATIO_CAP)


def _per_token_ratio(logprobs, log_s, token_level: bool):
    """``[B, T]`` ratio: ``s_i`` broadcast (sequence form) or GSPO-token's ``s_it``."""
    if not token_level:
        return jnp.broadcast_to(jnp.exp(log_s)[:, None], logprobs.shape)
    sg = jax.lax.stop_gradient
    return jnp.exp(sg(log_s)[:, None] + logprobs - sg(logprobs))


def gspo_loss_terms(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    loss_mask: jax.Array,
    config: LossConfig = LossConfig(),
    *,
    ref_logprobs: jax.Array | None = None,
    entropy: jax.Array | None = None,
    sample_logprobs: jax.Array | None = None,
) -> LossTerms:
    """Numerator and metric sums of the GSPO loss of one (micro-)batch (module docstring).

    Same arguments and result as :func:`toolrl_jax.rl.losses.policy_loss_terms`; only the
    importance ratio and the clipping are sequence-level.
    """
    f32 = jnp.promote_types(logprobs.dtype, jnp.float32)
    mask = loss_mask.astype(f32)
    logprobs = logprobs.astype(f32)
    old_logprobs = old_logprobs.astype(f32)
    adv = advantages.astype(f32)
    token_level = adv.ndim == 2
    adv = jnp.broadcast_to(adv if token_level else adv[:, None], mask.shape)
    sg = jax.lax.stop_gradient

    log_s = sequence_log_ratio(logprobs, old_logprobs, mask)
    ratio = _per_token_ratio(logprobs, log_s, token_level)
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
        mismatch = old_logprobs - sample_logprobs.astype(f32)
        token_sums["mismatch_abs_logp"] = jnp.sum(jnp.abs(mismatch) * mask)
        token_sums["mismatch_kl_k1"] = jnp.sum(-mismatch * mask)
        token_sums["mismatch_kl_k3"] = jnp.sum((jnp.exp(mismatch) - mismatch - 1.0) * mask)
        if config.tis_cap is not None:
            tis_w = sg(jnp.minimum(jnp.exp(mismatch), config.tis_cap))
            pg = pg * tis_w
            token_sums["tis_weight"] = jnp.sum(tis_w * mask)
    elif config.tis_cap is not None:
        raise ValueError("loss.tis_cap is set but the batch has no sample_logprobs")

    w = aggregation_weights(mask, config.aggregation, config.norm_constant)
    per_token = pg
    loss_sums = {"pg_loss": jnp.sum(w * pg)}
    if config.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("loss.kl_coef > 0 but the batch has no ref_logprobs")
        kl = kl_penalty(logprobs, ref_logprobs, config.kl_estimator)
        per_token = per_token + config.kl_coef * kl
        loss_sums["kl_loss"] = jnp.sum(w * kl)
        token_sums["ref_kl"] = jnp.sum(kl * mask)
    if config.entropy_coef > 0:
        if entropy is None:
            raise ValueError("loss.entropy_coef > 0 but no entropy was computed")
        per_token = per_token - config.entropy_coef * entropy.astype(f32)
        loss_sums["entropy_loss"] = jnp.sum(w * entropy.astype(f32))
    if entropy is not None:
        token_sums["entropy"] = jnp.sum(entropy.astype(f32) * mask)

    numerator = jnp.sum(w * per_token)
    loss_sums["loss"] = numerator
    log_ratio = logprobs - old_logprobs
    token_sums.update(
        clip_frac=jnp.sum(clipped * mask),
        dual_clip_frac=jnp.sum(dual_clipped * mask),
        approx_kl=jnp.sum((jnp.exp(log_ratio) - 1.0 - log_ratio) * mask),
        ppo_kl=jnp.sum(-log_ratio * mask),
        ratio_mean=jnp.sum(ratio * mask),  # token-weighted mean of s_i
        advantage_mean=jnp.sum(adv * mask),
        num_tokens=jnp.sum(mask),
    )
    return LossTerms(
        numerator=numerator,
        loss_sums={k: sg(v) for k, v in loss_sums.items()},
        token_sums={k: sg(v) for k, v in token_sums.items()},
    )

