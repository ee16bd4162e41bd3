"""Flax NNX decoder for Llama / SmolLM2 / Qwen2 / Qwen3, numerically matching transformers.

Architecture (pre-norm, per block)::

    h = x + o_proj(Attention(RoPE(q_proj(n1)), RoPE(k_proj(n1)), v_proj(n1)))   n1 = RMSNorm(x)
    y = h + down_proj(silu(gate_proj(n2)) * up_proj(n2))                           n2 = RMSNorm(h)

* RMSNorm (Zhang & Sennrich 2019) with HF semantics: ``w * (x32 * rsqrt(mean(x32^2) + eps))``
  computed in float32, cast back to the compute dtype, then multiplied by the weight.
* RoPE (Su et al. 2021) in HF's ``rotate_half`` layout: ``x * cos + rotate_half(x) * sin`` with
  ``cos = cos(p * inv_freq)`` repeated over both halves of the head, ``inv_freq_i =
  theta^(-2i / Dh)``; Llama 3 frequency scaling when ``config.rope_scaling`` is set.
* GQA (Ainslie et al. 2023): query head ``h`` reads KV head ``h // (H / KVH)``.
* Qwen3: per-head RMSNorm on q and k before RoPE. Qwen2: q/k/v biases.
* Softmax in float32; scale ``1 / sqrt(Dh)``.

Parameters (``nnx.state(model, nnx.Param)`` paths; kernels are HF weights transposed)::

    embed_tokens.embedding                       [V, D]
    layers[i].self_attn.{q,k,v}_proj.kernel      [D, H*Dh] / [D, KVH*Dh]  (+ .bias if attention_bias)
    layers[i].self_attn.o_proj.kernel            [H*Dh, D]                (+ .bias if o_proj_bias)
    layers[i].self_attn.{q,k}_norm.scale         [Dh]                     (qwen3)
    layers[i].mlp.{gate,up}_proj.kernel          [D, F]
    layers[i].mlp.down_proj.kernel               [F, D]
    layers[i].{input,post_attention}_layernorm.scale  [D]
    norm.scale                                   [D]
    lm_head.kernel                               [D, V]   (only when not tied)

Parameters are stored in ``config.param_dtype`` and cast to ``config.dtype`` for compute.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.sharding import param_shardings

_MASKED = float(np.finfo(np.float32).min)  # finite: fully-masked (padding) rows stay NaN-free
_INIT_STD = 0.02  # HF initializer_range


# --------------------------------------------------------------------------- KV cache


@flax.struct.dataclass
class KVCache:
    """Per-layer keys / values of a batch of sequences (a pytree; donate it to jit).

    Attributes:
      k, v: ``[L, B, S, KVH, Dh]`` in the compute dtype (keys stored after RoPE).
      pos: ``[B, S]`` int32, the position of the token cached in each slot; ``-1`` = empty.

    Semantics (see :meth:`Decoder.hidden`): the ``T`` new tokens of row ``b`` are written at
    slots ``cache_index[b] .. cache_index[b] + T - 1``; tokens whose ``segment_id == 0``
    are written with ``pos = -1`` (invisible). Then a query at position ``p`` of row ``b``
    attends slot ``s`` iff ``0 <= pos[b, s] <= p``. The caller advances ``cache_index`` by
    the number of valid tokens it wrote, so padding slots are overwritten next time. Writes
    past slot ``S - 1`` are dropped (scatter ``mode='drop'``), never clamped onto valid slots.
    Shard k/v with :func:`toolrl_jax.models.sharding.cache_partition_spec`.
    """

    k: jax.Array
    v: jax.Array
    pos: jax.Array

    @property
    def max_len(self) -> int:
        return self.pos.shape[1]

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]


def init_cache(
    config: ModelConfig, batch: int, max_len: int, dtype: Any = None
) -> KVCache:
    """An empty cache: zeros for k/v (``[L, B, max_len, KVH, Dh]``), ``pos = -1``."""
    dtype = jnp.dtype(dtype if dtype is not None else config.dtype)
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        pos=jnp.full((batch, max_len), -1, jnp.int32),
    )


# --------------------------------------------------------------------------- layers


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)``; kernel ``[in, out]`` (HF weight transposed)."""

    def __init__(
        self, in_features: int, out_features: int, *, use_bias: bool, config: ModelConfig,
        rngs: nnx.Rngs,
    ):
        pdtype = jnp.dtype(config.param_dtype)
        self.dtype = jnp.dtype(config.dtype)
        init = jax.nn.initializers.normal(_INIT_STD)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), pdtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), pdtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """HF RMSNorm: ``scale * cast(x32 / sqrt(mean(x32^2, -1) + eps), dtype)``."""

    def __init__(self, dim: int, *, eps: float, config: ModelConfig):
        self.eps = eps
        self.dtype = jnp.dtype(config.dtype)
        self.scale = nnx.Param(jnp.ones((dim,), jnp.dtype(config.param_dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * normed


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """``[Dh/2]`` float32 RoPE inverse frequencies (with Llama 3 scaling), as HF computes them."""
    dh = config.head_dim
    exps = np.arange(0, dh, 2, dtype=np.int64).astype(np.float32) / np.float32(dh)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exps)).astype(np.float32)
    rs = config.rope_scaling
    if rs is not None:
        old_len = rs.original_max_position_embeddings
        low_wavelen = old_len / rs.low_freq_factor
        high_wavelen = old_len / rs.high_freq_factor
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
        smooth = (old_len / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_cos_sin(
    positions: jax.Array, config: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """``cos, sin [B, T, Dh]`` for integer positions ``[B, T]`` (float32 math, compute dtype)."""
    inv_freq = jnp.asarray(rope_inv_freq(config))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    dtype = jnp.dtype(config.dtype)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """HF ``x * cos + rotate_half(x) * sin``; x ``[B, T, N, Dh]``, cos/sin ``[B, T, Dh]``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


#: Queries per block when T > 2 * ATTENTION_Q_CHUNK on the 'xla' path: bounds the float32
#: score buffer to ``[B, H, ATTENTION_Q_CHUNK, S]`` (each block rematerialised in backward).
ATTENTION_Q_CHUNK = 512


def _attention_one_query(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Decode-step attention (``T == 1``) as multiply-and-reduce in the cache's own layout.

    A batched matmul over ``[B, S, KVH, Dh]`` would make XLA transpose (copy) K and V of every
    layer at every decode step; broadcasting ``q`` against ``k`` and reducing over ``Dh`` (then
    ``probs`` against ``v`` reducing over ``S``) reads each cache entry once. Same numbers as
    :func:`_attention_xla` (float32 scores, masked entries at the float32 minimum).
    """
    b, _, h, dh = q.shape
    kvh = k.shape[2]
    g = h // kvh
    qg = q.reshape(b, 1, kvh, g, dh).astype(jnp.float32)
    scores = jnp.sum(qg * k.astype(jnp.float32)[:, :, :, None, :], axis=-1)  # [B, S, KVH, G]
    scores = jnp.where(mask[:, 0, :, None, None], scores * (1.0 / np.sqrt(dh)), _MASKED)
    probs = jax.nn.softmax(scores, axis=1)
    out = jnp.sum(probs[..., None] * v.astype(jnp.float32)[:, :, :, None, :], axis=1)  # [B,KVH,G,Dh]
    return out.reshape(b, 1, h, dh).astype(v.dtype)


def _attention_xla(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    b, t, h, dh = q.shape
    kvh = k.shape[2]
    if t == 1:
        return _attention_one_query(q, k, v, mask)
    qg = q.reshape(b, t, kvh, h // kvh, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None, :, :], scores * (1.0 / np.sqrt(dh)), _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, dh)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    impl: str = "xla",
    q_chunk: int | None = ATTENTION_Q_CHUNK,
) -> jax.Array:
    """Masked multi-head attention with GQA: ``softmax(q k^T / sqrt(Dh) + mask) v``.

    Args:
      q: ``[B, T, H, Dh]``; k, v: ``[B, S, KVH, Dh]``; mask: ``[B, T, S]`` bool (True = attend).
      impl: 'xla': einsum with float32 scores and softmax; masked logits are set to the float32
        minimum, so a query row with no visible key yields a finite (uniform) average. When
        ``T > 2 * q_chunk`` the queries are processed in blocks of ``q_chunk`` (``lax.map`` +
        ``jax.checkpoint``), so memory is ``O(q_chunk * S)`` per head instead of ``O(T * S)``.
        'cudnn': ``jax.nn.dot_product_attention(implementation='cudnn')`` (fused flash
        attention; needs an NVIDIA GPU and bf16/fp16); rows with no visible key are zeroed.
        On a non-GPU backend 'cudnn' falls back to 'xla'.

    Returns:
      ``[B, T, H, Dh]`` in q's dtype.
    """
    b, t, h, dh = q.shape
    if impl == "cudnn" and jax.default_backend() == "gpu":
        out = jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None, :, :], scale=1.0 / np.sqrt(dh), implementation="cudnn"
        )
        return jnp.where(jnp.any(mask, axis=-1)[:, :, None, None], out, 0).astype(q.dtype)
    if q_chunk is None or t <= 2 * q_chunk:
        return _attention_xla(q, k, v, mask)
    n = -(-t // q_chunk)
    pad = n * q_chunk - t
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mp = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
    q_blocks = qp.reshape(b, n, q_chunk, h, dh).swapaxes(0, 1)
    m_blocks = mp.reshape(b, n, q_chunk, mask.shape[-1]).swapaxes(0, 1)
    block = jax.checkpoint(lambda qm: _attention_xla(qm[0], k, v, qm[1]))
    out = jax.lax.map(block, (q_blocks, m_blocks))  # [n, B, q_chunk, H, Dh]
    return out.swapaxes(0, 1).reshape(b, n * q_chunk, h, dh)[:, :t]


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        d, dh = c.hidden_size, c.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, dh
        self.impl = c.attention_impl
        self.q_proj = Linear(d, c.num_heads * dh, use_bias=c.attention_bias, config=c, rngs=rngs)
        self.k_proj = Linear(d, c.num_kv_heads * dh, use_bias=c.attention_bias, config=c, rngs=rngs)
        self.v_proj = Linear(d, c.num_kv_heads * dh, use_bias=c.attention_bias, config=c, rngs=rngs)
        self.o_proj = Linear(c.num_heads * dh, d, use_bias=c.o_proj_bias, config=c, rngs=rngs)
        if c.qk_norm:
            self.q_norm = RMSNorm(dh, eps=c.rms_norm_eps, config=c)
            self.k_norm = RMSNorm(dh, eps=c.rms_norm_eps, config=c)
        else:
            self.q_norm = None
            self.k_norm = None

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        layer_cache: tuple[jax.Array, jax.Array, int, jax.Array] | None = None,
        kv_len: int | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x ``[B, T, D]`` -> ``[B, T, D]``.

        ``layer_cache = (k_all [L,B,S,KVH,Dh], v_all, layer, cache_index [B])``: new k/v are
        written into the stacked cache at ``layer`` and attention reads slots ``[:kv_len]``
        (static; all ``S`` slots when None; ``mask`` is then ``[B, T, kv_len]``).
        """
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        new_cache = None
        if layer_cache is not None:
            k_all, v_all, layer, cache_index = layer_cache
            # Write this layer's new keys into [L, B, S, ...] at (layer, b, cache_index[b]).
            k_all = _write_layer(k_all, k, layer, cache_index)
            v_all = _write_layer(v_all, v, layer, cache_index)
            k, v = k_all[layer, :, :kv_len], v_all[layer, :, :kv_len]
            new_cache = (k_all, v_all)
        out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, impl=self.impl)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), new_cache


def _write_layer(
    buf: jax.Array, new: jax.Array, layer: int, cache_index: jax.Array
) -> jax.Array:
    """``buf[layer, b, cache_index[b] + t] = new[b, t]``; buf ``[L,B,S,KVH,Dh]``, new ``[B,T,KVH,Dh]``.

    One scatter in the buffer's own layout (in place when the cache is donated; a vmapped
    ``dynamic_update_slice`` over the batch axis made XLA transpose and copy the whole cache).
    """
    b, t = new.shape[:2]
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]
    slots = cache_index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    return buf.at[layer, rows, slots].set(
        new.astype(buf.dtype), indices_are_sorted=True, unique_indices=True, mode="drop"
    )


class MLP(nnx.Module):
    """SwiGLU (Shazeer 2020): ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, use_bias=False, config=c, rngs=rngs)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, use_bias=False, config=c, rngs=rngs)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, use_bias=False, config=c, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.self_attn = Attention(c, rngs=rngs)
        self.mlp = MLP(c, rngs=rngs)
        self.input_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, config=c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, config=c)

    def __call__(self, x, cos, sin, mask, layer_cache=None, kv_len=None):
        a, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_cache, kv_len)
        h = x + a
        return h + self.mlp(self.post_attention_layernorm(h)), new_cache


#: ``remat_policy`` names -> ``jax.checkpoint`` policies of :func:`scan_blocks`' layer body:
#: ``full`` keeps only each layer's input; ``dots`` also keeps the outputs of the weight matmuls
#: (the q/k/v/o and MLP projections, dots without batch dimensions), so the backward recomputes
#: only attention and the elementwise ops: less compute, more activation memory.
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def scan_blocks(
    blocks: Any, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
    policy: str = "full",
) -> jax.Array:
    """The blocks applied in order as one ``lax.scan`` whose body is ``jax.checkpoint``-ed
    (with the :data:`REMAT_POLICIES` entry ``policy``).

    The per-layer parameters are stacked on the fly (``[L, ...]``, one copy of the layer
    weights inside the step; the HF-style ``layers[i]`` storage is unchanged), so the backward
    pass keeps only each layer's input ``x [B, T, D]`` and recomputes the layer's internals
    (attention scores ``[B, H, T, S]`` float32, the MLP's ``[B, T, F]``) one layer at a time.
    Unlike ``jax.checkpoint`` around unrolled blocks this survives XLA:CPU, whose pipeline
    removes optimization barriers so CSE merges the recomputation back into the forward (the
    unrolled "remat" kept ~300 MB per SmolLM2-135M layer at 8 x 432 tokens). One layer body is
    compiled instead of ``L``.
    """
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(b) for b in blocks])

    @functools.partial(jax.checkpoint, policy=REMAT_POLICIES[policy])
    def body(h: jax.Array, layer_state: Any) -> tuple[jax.Array, None]:
        return nnx.merge(graphdef, layer_state)(h, cos, sin, mask)[0], None

    return jax.lax.scan(body, x, stacked)[0]


# --------------------------------------------------------------------------- decoder


class Decoder(nnx.Module):
    """Decoder-only causal LM (see module docstring for the math and parameter paths)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        pdtype = jnp.dtype(c.param_dtype)
        self.embed_tokens = nnx.Embed(
            c.vocab_size, c.hidden_size, param_dtype=pdtype, dtype=jnp.dtype(c.dtype),
            embedding_init=jax.nn.initializers.normal(_INIT_STD), rngs=rngs,
        )
        self.layers = nnx.List([Block(c, rngs=rngs) for _ in range(c.num_layers)])
        self.norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, config=c)
        if c.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(c.hidden_size, c.vocab_size, use_bias=False, config=c, rngs=rngs)

    # ------------------------------------------------------------------ forward
    def hidden(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | None = None,
        kv_len: int | None = None,
        remat: bool | None = None,
        remat_policy: str = "full",
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states ``[B, T, D]`` (compute dtype) and the updated cache.

        Args:
          tokens: ``[B, T]`` int32 token ids.
          positions: ``[B, T]`` int32 RoPE positions (they only feed RoPE, and the cache mask).
          segment_ids: ``[B, T]`` int32; 0 = padding; default all ones.
          cache: optional :class:`KVCache`; cache_index: ``[B]`` int32 write offsets (required
            with a cache; the caller guarantees ``cache_index + T <= S``).

        Masks:
          * Without a cache: token ``i`` attends token ``j`` iff ``j <= i`` (index order) and
            ``segment_ids[i] == segment_ids[j] != 0``. Left padding, right padding and packed
            sequences (several segments per row, positions restarting) all work; padding
            rows give finite garbage (never NaN).
          * With a cache: new tokens of row ``b`` are written at slots ``cache_index[b] + t``
            (``pos = positions`` where ``segment_ids != 0``, else ``-1``); a query with
            position ``p`` attends slot ``s`` iff ``0 <= cache.pos[b, s] <= p``. One sequence
            per row (no packing). Covers right-padded prefill (``cache_index = 0``),
            one-token decode with per-row offsets, and appending a chunk (tool observation)
            to some rows only (``segment_ids = 0`` on the other rows). Advance
            ``cache_index`` by the number of valid tokens written.

        Without a cache and with ``remat`` (default ``config.remat``) the blocks run as one
        rematerialised ``lax.scan`` (:func:`scan_blocks`: the training forward/backward; what
        the backward keeps is ``remat_policy``, see :data:`REMAT_POLICIES`); else unrolled.
        """
        c = self.config
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        x = self.embed_tokens(tokens).astype(jnp.dtype(c.dtype))
        cos, sin = rope_cos_sin(positions, c)
        if cache is None:
            t = tokens.shape[1]
            causal = jnp.tril(jnp.ones((t, t), bool))
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            mask = causal[None] & same & (segment_ids[:, None, :] != 0)
            if c.remat if remat is None else remat:
                return self.norm(scan_blocks(self.layers, x, cos, sin, mask,
                                             remat_policy)), None
            for block in self.layers:
                x = block(x, cos, sin, mask)[0]
            return self.norm(x), None

        if cache_index is None:
            raise ValueError("Decoder.hidden: cache_index [B] is required with a cache")
        cache_index = jnp.asarray(cache_index, jnp.int32)
        new_pos = jnp.where(segment_ids != 0, positions, -1).astype(jnp.int32)
        rows = jnp.arange(tokens.shape[0], dtype=jnp.int32)[:, None]
        slots = cache_index[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
        pos = cache.pos.at[rows, slots].set(
            new_pos, indices_are_sorted=True, unique_indices=True, mode="drop"
        )
        if kv_len is not None and not 0 < kv_len <= cache.max_len:
            raise ValueError(f"Decoder.hidden: kv_len={kv_len} outside 1..{cache.max_len}")
        seen = pos[:, None, :kv_len]
        mask = (seen >= 0) & (seen <= positions[:, :, None])
        k_all, v_all = cache.k, cache.v
        for layer, block in enumerate(self.layers):
            x, (k_all, v_all) = block(
                x, cos, sin, mask, (k_all, v_all, layer, cache_index), kv_len
            )
        return self.norm(x), KVCache(k=k_all, v=v_all, pos=pos)

    def lm_head_kernel(self) -> jax.Array:
        """``[D, V]`` output projection in param dtype (``embedding.T`` when tied)."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...].T
        return self.lm_head.kernel[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """``[..., D] -> [..., V]`` float32 logits (compute-dtype matmul, f32 accumulation).

        Only for small batches / the last position: hot paths should use
        :meth:`lm_head_kernel` with vocab chunking instead of building ``[B, T, V]``.
        """
        dtype = jnp.dtype(self.config.dtype)
        return jnp.dot(
            hidden.astype(dtype),
            self.lm_head_kernel().astype(dtype),
            preferred_element_type=jnp.float32,
        )

    def __call__(
        self, tokens: jax.Array, positions: jax.Array, *, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """``[B, T, V]`` float32 logits without a cache (tests / eval convenience)."""
        h, _ = self.hidden(tokens, positions, segment_ids=segment_ids)
        return self.logits(h)


def create_model(
    config: ModelConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rngs: nnx.Rngs | None = None,
) -> Any:
    """Build a randomly initialised :class:`Decoder`.

    With a mesh, the model is traced abstractly (``nnx.eval_shape``) and its parameters are
    created by one jitted init whose ``out_shardings`` are the param NamedShardings, so each
    device materialises only its own shards (no full copy lands on one device). Follow with
    :func:`toolrl_jax.models.weights.load_hf_state` (same mesh) to load real weights.
    """
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    if mesh is None:
        return Decoder(config, rngs=rngs)
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(abstract_state, config, mesh)
    key = rngs.params()

    def init(key: jax.Array) -> Any:
        return nnx.state(Decoder(config, rngs=nnx.Rngs(params=key)))

    state = jax.jit(init, out_shardings=shardings)(key)
    return nnx.merge(graphdef, state)
