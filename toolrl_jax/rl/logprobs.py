"""Token log-probs and entropy from hidden states without materialising ``[B, T, V]`` logits.

For hidden states ``h [N, D]`` (``N = B*T``) and an output kernel ``W [D, V]`` the logits are
``z = h W / tau``. We need, per position, ``log p(y) = z_y - logsumexp(z)`` and the entropy
``H = logsumexp(z) - sum_j p_j z_j``. The vocabulary is processed in chunks of ``C`` columns
inside ``lax.scan`` with an online (streaming) logsumexp: for running max ``m``,
``s = sum exp(z - m)`` and ``u = sum exp(z - m) z``, a new chunk with max ``m'`` updates
``s <- s exp(m - m') + sum_chunk exp(z - m')`` (same for ``u``), and at the end
``lse = m + log s``, ``H = lse - u / s``.

The backward pass is a ``jax.custom_vjp`` that recomputes each chunk's logits, so neither pass
keeps more than one ``[N, C]`` float32 logits chunk alive. With ``g`` the cotangents of
``log p(y)`` and ``H``::

    dz_j = g_lp (1[j = y] - p_j) - g_H p_j (log p_j + H)
    dh   = sum_chunks dz_c W_c^T / tau,   dW_c = h^T dz_c / tau

Chunks are taken with ``dynamic_slice`` at ``start = min(i C, V - C)``; columns of the last
(overlapping) chunk that were already covered are masked out, so ``V`` need not be a multiple of
``C`` and the kernel is never padded or copied. Matmuls run in the input dtype (e.g. bf16) with
float32 accumulation; all softmax arithmetic is float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = -1e30  # finite "minus infinity" so that exp(m - m') never sees inf - inf


def _chunk_plan(vocab: int, vocab_chunk: int) -> tuple[int, int]:
    chunk = max(1, min(int(vocab_chunk), vocab))
    num_chunks = -(-vocab // chunk)
    return chunk, num_chunks


def _chunk_logits(h, kernel, i, chunk, vocab, inv_temp):
    """Logits ``[N, C]`` (float32) of chunk ``i``, its column ids and the validity mask."""
    start = jnp.minimum(i * chunk, vocab - chunk)
    w = jax.lax.dynamic_slice_in_dim(kernel, start, chunk, axis=1)
    z = jnp.dot(h, w, preferred_element_type=_acc_dtype(h.dtype)) * inv_temp
    cols = start + jnp.arange(chunk, dtype=jnp.int32)
    valid = cols >= i * chunk  # the overlapping tail of the last chunk was already seen
    return z, cols, valid, start


def _acc_dtype(dtype):
    """float32, or float64 when the inputs are float64 (x64 tests)."""
    return jnp.promote_types(jax.dtypes.canonicalize_dtype(dtype), jnp.float32)


def _forward(h, kernel, targets, chunk, inv_temp, mode):
    compute_entropy = mode[0]
    n = h.shape[0]
    vocab = kernel.shape[1]
    _, num_chunks = _chunk_plan(vocab, chunk)

    def body(carry, i):
        m, s, u, zy = carry
        z, cols, valid, _ = _chunk_logits(h, kernel, i, chunk, vocab, inv_temp)
        z = jnp.where(valid[None, :], z, _NEG)
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        scale = jnp.exp(m - m_new)
        e = jnp.exp(z - m_new[:, None])
        s = s * scale + jnp.sum(e, axis=-1)
        if compute_entropy:
            u = u * scale + jnp.sum(e * jnp.where(valid[None, :], z, 0.0), axis=-1)
        hit = (cols[None, :] == targets[:, None]) & valid[None, :]
        zy = zy + jnp.sum(jnp.where(hit, z, 0.0), axis=-1)
        return (m_new, s, u, zy), None

    f32 = _acc_dtype(h.dtype)
    init = (jnp.full((n,), _NEG, f32), jnp.zeros((n,), f32), jnp.zeros((n,), f32),
            jnp.zeros((n,), f32))
    (m, s, u, zy), _ = jax.lax.scan(body, init, jnp.arange(num_chunks, dtype=jnp.int32))
    lse = m + jnp.log(s)
    logprobs = zy - lse
    entropy = lse - u / s if compute_entropy else jnp.zeros_like(lse)
    return logprobs, entropy, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked(h, kernel, targets, chunk, inv_temp, mode):
    """``mode = (compute_entropy, entropy_grad)`` (static)."""
    logprobs, entropy, _ = _forward(h, kernel, targets, chunk, inv_temp, mode)
    return logprobs, entropy


def _chunked_fwd(h, kernel, targets, chunk, inv_temp, mode):
    logprobs, entropy, lse = _forward(h, kernel, targets, chunk, inv_temp, mode)
    return (logprobs, entropy), (h, kernel, targets, lse, entropy)


def _chunked_bwd(chunk, inv_temp, mode, res, cotangents):
    compute_entropy = mode[1]  # entropy gradient wanted
    h, kernel, targets, lse, entropy = res
    g_lp, g_h = cotangents
    acc = _acc_dtype(h.dtype)
    g_lp = g_lp.astype(acc)
    g_h = g_h.astype(acc) if compute_entropy else jnp.zeros_like(g_lp)
    vocab = kernel.shape[1]
    _, num_chunks = _chunk_plan(vocab, chunk)

    def body(carry, i):
        dh, dw = carry
        z, cols, valid, start = _chunk_logits(h, kernel, i, chunk, vocab, inv_temp)
        logp = z - lse[:, None]
        p = jnp.exp(logp)
        onehot = (cols[None, :] == targets[:, None]).astype(acc)
        dz = g_lp[:, None] * (onehot - p)
        if compute_entropy:
            dz = dz - g_h[:, None] * p * (logp + entropy[:, None])
        dz = jnp.where(valid[None, :], dz, 0.0) * inv_temp
        w = jax.lax.dynamic_slice_in_dim(kernel, start, chunk, axis=1)
        dz_c = dz.astype(h.dtype)
        dh = dh + jnp.dot(dz_c, w.T, preferred_element_type=acc)
        dw_chunk = jnp.dot(h.T, dz_c, preferred_element_type=acc)
        old = jax.lax.dynamic_slice_in_dim(dw, start, chunk, axis=1)
        dw = jax.lax.dynamic_update_slice_in_dim(dw, old + dw_chunk, start, axis=1)
        return (dh, dw), None

    init = (jnp.zeros(h.shape, acc), jnp.zeros(kernel.shape, acc))
    (dh, dw), _ = jax.lax.scan(body, init, jnp.arange(num_chunks, dtype=jnp.int32))
    return dh.astype(h.dtype), dw.astype(kernel.dtype), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def token_logprobs_and_entropy(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    *,
    vocab_chunk: int = 8192,
    compute_entropy: bool = True,
    temperature: float = 1.0,
    entropy_grad: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs of ``targets`` and the entropy of ``softmax(hidden @ kernel / temperature)``.

    Args:
      hidden: ``[B, T, D]`` final hidden states (after the final norm), any float dtype.
      kernel: ``[D, V]`` output projection (``lm_head``; the transposed embedding when tied).
      targets: ``[B, T]`` int token ids whose log-probs are wanted (usually ``tokens`` shifted
        left by one).
      vocab_chunk: columns per chunk ``C``; memory is ``O(B T C)`` instead of ``O(B T V)``.
      compute_entropy: also return the entropy (else None; slightly cheaper).
      temperature: logits are divided by it (match the sampler's temperature).
      entropy_grad: False treats the entropy as a constant (``stop_gradient``; for logging
        only) and skips its term in the backward pass.

    Returns:
      ``(logprobs [B, T] float32, entropy [B, T] float32 or None)``; differentiable in
      ``hidden`` and ``kernel`` with a chunked backward pass.
    """
    b, t, d = hidden.shape
    if kernel.shape[0] != d:
        raise ValueError(f"kernel {kernel.shape} does not match hidden size {d}")
    chunk, _ = _chunk_plan(kernel.shape[1], vocab_chunk)
    h = hidden.reshape(b * t, d)
    if kernel.dtype != h.dtype:
        kernel = kernel.astype(h.dtype)
    y = targets.reshape(b * t).astype(jnp.int32)
    mode = (bool(compute_entropy), bool(compute_entropy and entropy_grad))
    logprobs, entropy = _chunked(h, kernel, y, chunk, 1.0 / float(temperature), mode)
    logprobs = logprobs.reshape(b, t)
    if not compute_entropy:
        return logprobs, None
    entropy = entropy.reshape(b, t)
    return logprobs, (entropy if mode[1] else jax.lax.stop_gradient(entropy))


def naive_token_logprobs_and_entropy(
    hidden: jax.Array, kernel: jax.Array, targets: jax.Array, *, temperature: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Reference: full ``[B, T, V]`` float32 logits (small shapes and tests only)."""
    z = jnp.einsum(
        "btd,dv->btv", hidden, kernel, preferred_element_type=_acc_dtype(hidden.dtype)
    )
    logp = jax.nn.log_softmax(z / temperature, axis=-1)
    lp = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return lp, ent
