"""Sampling strategies as pure functions of logits: temperature, top-k, top-p, greedy.

The processed distribution a token is drawn from is, in this order (the order of Hugging Face's
logits warpers and of vLLM):

1. temperature:  z = logits / T                                    (T > 0)
2. top-k:        z_i = -inf unless z_i >= (k-th largest z)   (k > 0; ties at the k-th value kept)
3. top-p:        keep the smallest set of most likely tokens whose probability under
                 softmax(z) sums to >= p (the most likely token is always kept), -inf elsewhere
4. q = softmax(z)                                                   renormalised over the kept set

``sample_logprobs`` returned with each token are ``log q(token)``: the log-probability under the
distribution actually sampled from (after temperature, top-k and top-p), which is what an
importance ratio pi_theta / q needs for truncated importance sampling of a rollout/trainer
mismatch. Greedy decoding (``temperature == 0``) is a point mass; for it the returned log-prob is
the untempered model log-probability ``log_softmax(logits)[token]`` (log q would be 0), which is
the useful number for diagnostics.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from toolrl_jax.errors import ConfigError

NEG_INF = -1e30  # large negative instead of -inf keeps log_softmax finite on masked entries


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How the next token is drawn from the model's logits.

    Attributes:
      temperature: 0 = greedy (argmax); > 0 divides logits by it.
      top_p: nucleus sampling mass in (0, 1]; 1 disables it.
      top_k: keep only the k most likely tokens; 0 disables it.

    The config is hashable and passed to jitted functions as a static argument: one program is
    compiled per distinct config.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ConfigError(
                f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ConfigError(f"sampling.top_k must be an integer >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def process_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """Log-probabilities of the processed distribution ``q`` (module docstring), shape like logits.

    Args:
      logits: ``[..., V]`` model logits (any float dtype; computed in float32).
      config: sampling strategy; for greedy the untempered ``log_softmax(logits)`` is returned.

    Returns:
      ``[..., V]`` float32 ``log q``; masked tokens hold a very negative value (``exp`` is 0).
    """
    z = logits.astype(jnp.float32)
    if config.greedy:
        return jax.nn.log_softmax(z, axis=-1)
    if config.temperature != 1.0:
        z = z / jnp.float32(config.temperature)
    vocab = z.shape[-1]
    if 0 < config.top_k < vocab:
        kth = jax.lax.top_k(z, config.top_k)[0][..., -1:]
        z = jnp.where(z >= kth, z, NEG_INF)
    if config.top_p < 1.0:
        z = _top_p_mask(z, config.top_p)
    return jax.nn.log_softmax(z, axis=-1)


def _top_p_mask(z: jax.Array, top_p: float) -> jax.Array:
    """Mask ``z [..., V]`` outside the nucleus: descending, keep i while mass before i < p."""
    sorted_desc = -jnp.sort(-z, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < jnp.float32(top_p)  # index 0 always kept (mass_before == 0)
    # smallest kept logit = threshold; ties at the threshold are kept
    threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(z >= threshold, z, NEG_INF)


def sample_from_logits(
    keys: jax.Array, logits: jax.Array, config: SamplingConfig
) -> tuple[jax.Array, jax.Array]:
    """Draw one token per row.

    Args:
      keys: ``[B]`` PRNG keys (typed, or raw ``uint32 [B, 2]``), one independent stream per row;
        unused for greedy.
      logits: ``[B, V]`` next-token logits.
      config: sampling strategy.

    Returns:
      ``(tokens [B] int32, sample_logprobs [B] float32)`` with ``sample_logprobs = log q(token)``
      (see module docstring; greedy: untempered model log-prob).
    """
    logq = process_logits(logits, config)
    if config.greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        tokens = jax.vmap(lambda k, lq: jax.random.categorical(k, lq))(keys, logq).astype(jnp.int32)
    sample_logprobs = jnp.take_along_axis(logq, tokens[:, None], axis=-1)[:, 0]
    return tokens, sample_logprobs


def probabilities(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """``q`` itself, ``[..., V]`` (for tests and diagnostics; greedy gives a one-hot at argmax)."""
    if config.greedy:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jnp.exp(process_logits(logits, config))
