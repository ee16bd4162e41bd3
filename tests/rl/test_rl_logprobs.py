"""Vocab-chunked log-probs / entropy vs numpy and the naive full-logits computation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.rl._reference import ref_logprobs_entropy
from toolrl_jax.rl.logprobs import naive_token_logprobs_and_entropy, token_logprobs_and_entropy


def _inputs(b=2, t=5, d=16, v=37, seed=0, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(k[0], (b, t, d), jnp.float32).astype(dtype)
    w = (jax.random.normal(k[1], (d, v), jnp.float32) / np.sqrt(d) * 3).astype(dtype)
    y = jax.random.randint(k[2], (b, t), 0, v)
    return h, w, y


@pytest.mark.parametrize("chunk", [1, 8, 10, 37, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_numpy(chunk, temperature):
    h, w, y = _inputs()
    lp, ent = jax.jit(
        lambda h, w, y: token_logprobs_and_entropy(h, w, y, vocab_chunk=chunk,
                                                   temperature=temperature)
    )(h, w, y)
    want_lp, want_ent = ref_logprobs_entropy(h, w, y, temperature)
    chex.assert_shape((lp, ent), (2, 5))
    np.testing.assert_allclose(np.asarray(lp), want_lp, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-6, atol=1e-5)


def test_no_entropy_and_bf16():
    h, w, y = _inputs(dtype=jnp.bfloat16)
    lp, ent = token_logprobs_and_entropy(h, w, y, vocab_chunk=16, compute_entropy=False)
    assert ent is None and lp.dtype == jnp.float32
    # reference on the same bf16-rounded numbers
    want_lp, _ = ref_logprobs_entropy(np.asarray(h.astype(jnp.float32)),
                                      np.asarray(w.astype(jnp.float32)), y)
    np.testing.assert_allclose(np.asarray(lp), want_lp, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("chunk", [7, 16])
def test_gradients_match_naive(chunk):
    h, w, y = _inputs(seed=1)
    g_lp = jax.random.normal(jax.random.key(5), y.shape)
    g_ent = jax.random.normal(jax.random.key(6), y.shape)

    def obj(fn):
        def f(h, w):
            lp, ent = fn(h, w)
            return jnp.sum(lp * g_lp) + jnp.sum(ent * g_ent)
        return f

    chunked = obj(lambda h, w: token_logprobs_and_entropy(h, w, y, vocab_chunk=chunk,
                                                          temperature=0.8))
    naive = obj(lambda h, w: naive_token_logprobs_and_entropy(h, w, y, temperature=0.8))
    ga = jax.jit(jax.grad(chunked, (0, 1)))(h, w)
    gb = jax.jit(jax.grad(naive, (0, 1)))(h, w)
    for a, b in zip(ga, gb):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6 * scale * 10)


def test_memory_does_not_scale_with_vocab():
    """Compiled temp memory of value-and-grad grows with V only through [D, V] buffers."""
    b, t, d, chunk = 4, 128, 32, 256
    n = b * t

    def temp_bytes(fn, v):
        h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
        w = jax.ShapeDtypeStruct((d, v), jnp.float32)
        y = jax.ShapeDtypeStruct((b, t), jnp.int32)

        def loss(h, w, y):
            lp, ent = fn(h, w, y)
            return jnp.sum(lp) + jnp.sum(ent)

        compiled = jax.jit(jax.grad(loss, (0, 1))).lower(h, w, y).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    chunked = lambda h, w, y: token_logprobs_and_entropy(h, w, y, vocab_chunk=chunk)  # noqa: E731
    small, big = 1024, 8192
    growth = temp_bytes(chunked, big) - temp_bytes(chunked, small)
    naive_growth = (temp_bytes(naive_token_logprobs_and_entropy, big)
                    - temp_bytes(naive_token_logprobs_and_entropy, small))
    logits_growth = n * (big - small) * 4  # one float32 [N, V] buffer
    # the naive version really holds [N, V] logits (the measurement can see it) ...
    assert naive_growth >= logits_growth
    # ... the chunked one grows at most by a few [D, V] float32 buffers (the dW accumulator)
    assert growth <= 4 * d * (big - small) * 4, (growth, logits_growth)


def test_entropy_without_gradient():
    h, w, y = _inputs(seed=2)

    def f(h, w, entropy_grad):
        lp, ent = token_logprobs_and_entropy(h, w, y, vocab_chunk=8, entropy_grad=entropy_grad)
        return jnp.sum(lp) + jnp.sum(ent)

    g_no = jax.grad(f, (0, 1))(h, w, False)
    g_lp = jax.grad(
        lambda h, w: jnp.sum(naive_token_logprobs_and_entropy(h, w, y)[0]), (0, 1))(h, w)
    for a, b in zip(g_no, g_lp):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    _, ent = token_logprobs_and_entropy(h, w, y, vocab_chunk=8, entropy_grad=False)
    np.testing.assert_allclose(np.asarray(ent), ref_logprobs_entropy(h, w, y)[1], atol=1e-5)
