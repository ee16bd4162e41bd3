"""Small models for rollout tests: random tiny decoders with non-degenerate outputs, and an
"oracle" policy whose next token is a lookup of the exact prefix (scripted trajectories)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolrl_jax.models import ModelConfig, create_model


def uncached_next_token_logits(model, max_len: int = 96):
    """``f(seq) -> [V]`` logits after ``seq`` from one full forward pass without a cache
    (jitted once: ``seq`` is right-padded to ``max_len``, which causal attention ignores)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def last_logits(state, ids, n):
        logits = nnx.merge(graphdef, state)(ids, jnp.arange(max_len, dtype=jnp.int32)[None])
        return logits[0, n - 1]

    def f(seq):
        ids = np.zeros((1, max_len), np.int32)
        ids[0, : len(seq)] = seq
        return np.asarray(last_logits(state, ids, len(seq)))

    return f


def random_tiny_decoder(
    model_type: str = "llama", *, seed: int = 0, scale: float = 0.3, **overrides
):
    """A tiny Decoder whose params are N(0, scale^2) (std 0.02 init makes greedy output repeat
    the last token, which would hide cache bugs)."""
    config = ModelConfig.tiny(model_type, **overrides)
    model = create_model(config, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var.get_value()
        shape, dtype = value.shape, value.dtype
        if len(shape) == 1 and shape[0] in (config.hidden_size, config.head_dim):  # norm scales
            var.set_value(jnp.asarray(1.0 + 0.1 * rng.standard_normal(shape), dtype))
        else:
            var.set_value(jnp.asarray(scale * rng.standard_normal(shape), dtype))
    return model


# --------------------------------------------------------------------------- oracle policy
_MASK32 = 0xFFFFFFFF


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class OracleCache:
    """Same field names / layouts as the decoder's KVCache: k holds token ids ([1, B, S, 1, 1])."""

    k: jax.Array
    v: jax.Array
    pos: jax.Array


def hash_multipliers(max_len: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 2**32 - 1, size=(max_len,), dtype=np.uint64).astype(np.uint32) | 1


def prefix_hash(ids, mults: np.ndarray) -> int:
    """uint32 hash of a whole prefix: sum_i (ids[i] + 1) * mults[i] mod 2^32 (host reference)."""
    h = 0
    for i, t in enumerate(ids):
        h = (h + (int(t) + 1) * int(mults[i])) & _MASK32
    return h


class OraclePolicy(nnx.Module):
    """Next-token logits = one-hot (x 30) at ``table[hash(prefix)]``; ``default_token`` if unknown.

    The prefix is read back from the KV cache through the same cache semantics as the real
    decoder (slots with 0 <= pos <= p), so anything the engine writes wrongly (a re-encoded
    token, a wrong position, a stale row) changes the hash and derails the script.
    """

    def __init__(
        self,
        scripts: dict[tuple[int, ...], int],
        *,
        vocab_size: int,
        max_len: int,
        default_token: int,
        seed: int = 0,
    ):
        mults = hash_multipliers(max_len, seed)
        keys = np.array([prefix_hash(p, mults) for p in scripts], np.uint32)
        vals = np.array(list(scripts.values()), np.int32)
        if len(set(keys.tolist())) != len(keys):
            raise ValueError("hash collision in the oracle table; change the seed")
        self.keys = nnx.Variable(jnp.asarray(keys))
        self.vals = nnx.Variable(jnp.asarray(vals))
        self.mults_dev = nnx.Variable(jnp.asarray(mults))
        self.vocab_size = vocab_size
        self.default_token = default_token

    def init_cache(self, batch: int, max_len: int) -> OracleCache:
        return OracleCache(
            k=jnp.zeros((1, batch, max_len, 1, 1), jnp.float32),
            v=jnp.zeros((1, batch, max_len, 1, 1), jnp.float32),
            pos=jnp.full((batch, max_len), -1, jnp.int32),
        )

    def hidden(self, tokens, positions, *, segment_ids=None, cache=None, cache_index=None):
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        new_pos = jnp.where(segment_ids != 0, positions, -1).astype(jnp.int32)
        upd = jax.vmap(lambda row, u, s: jax.lax.dynamic_update_slice(row, u, (s,)))
        pos = upd(cache.pos, new_pos, cache_index)
        ids = upd(cache.k[0, :, :, 0, 0], tokens.astype(jnp.float32), cache_index)
        mults = self.mults_dev.value
        term = (ids.astype(jnp.uint32) + 1) * mults[jnp.clip(pos, 0, mults.shape[0] - 1)]  # [B, S]
        visible = (pos[:, None, :] >= 0) & (pos[:, None, :] <= positions[:, :, None])  # [B,T,S]
        h = jnp.sum(jnp.where(visible, term[:, None, :], jnp.uint32(0)), axis=-1, dtype=jnp.uint32)
        k = ids[None, :, :, None, None]
        return h[..., None], OracleCache(k=k, v=k, pos=pos)

    def logits(self, hidden):
        h = hidden[..., 0]
        hit = h[..., None] == self.keys.value  # [..., K]
        token = jnp.where(
            jnp.any(hit, -1), self.vals.value[jnp.argmax(hit, -1)], self.default_token
        )
        return 30.0 * jax.nn.one_hot(token, self.vocab_size, dtype=jnp.float32)
