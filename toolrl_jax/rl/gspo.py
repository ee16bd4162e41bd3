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

import dataclasses

import jax

from toolrl_jax.rl.losses import LossConfig, LossTerms, policy_loss_terms

#: GSPO paper's clipping range (Section 5.1): left 3e-4, right 4e-4.
GSPO_CLIP_EPS_LOW = 3e-4
GSPO_CLIP_EPS_HIGH = 4e-4
def gspo_loss_config(**overrides) -> LossConfig:
    """A :class:`LossConfig` with the paper's settings (clip 3e-4 / 4e-4, seq-mean-token-mean)."""
    fields = dict(clip_eps_low=GSPO_CLIP_EPS_LOW, clip_eps_high=GSPO_CLIP_EPS_HIGH,
                  aggregation="seq-mean-token-mean")
    fields.update(overrides)
    return LossConfig(**fields)


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
    return policy_loss_terms(logprobs, old_logprobs, advantages, loss_mask,
                             dataclasses.replace(config, ratio_level="sequence"),
                             ref_logprobs=ref_logprobs, entropy=entropy,
                             sample_logprobs=sample_logprobs)
