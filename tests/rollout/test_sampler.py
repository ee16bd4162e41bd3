"""Cached sampler vs uncached references: greedy output equals argmax decoding that re-runs the
full forward each step (mixed prompt lengths, chunked decode, appended chunks); stops; compile
counts; PRNG streams independent of slot and batch composition."""

from __future__ import annotations

import re

import chex
import jax
import numpy as np
import pytest

from toolrl_jax.rollout import stops
from toolrl_jax.rollout.sampler import Sampler, bucket_length, bucket_rows
from toolrl_jax.rollout.sampling import SamplingConfig

from ._models import uncached_next_token_logits

GREEDY = SamplingConfig(temperature=0.0)


_REFERENCES: dict = {}


def reference_logits(model):
    """The jitted uncached forward of ``model`` (compiled once per model in this module)."""
    key = id(model)
    if key not in _REFERENCES:
        _REFERENCES[key] = (model, uncached_next_token_logits(model))
    return _REFERENCES[key][1]


def full_forward_greedy(model, prompt, n, *, eos=(), stop_seqs=()):
    """Reference: re-run the whole sequence through the model (no cache) for every new token."""
    next_logits = reference_logits(model)
    seq = list(prompt)
    out = []
    for _ in range(n):
        tok = int(np.argmax(next_logits(seq)))
        seq.append(tok)
        out.append(tok)
        if tok in eos:
            return out, "eos"
        if any(len(out) >= len(s) and out[-len(s) :] == list(s) for s in stop_seqs):
            return out, "stop_sequence"
    return out, "length"


PROMPTS = [[5, 6, 7], list(range(10, 31)), [3], [40, 41, 42, 43, 44, 45, 46], [9, 8]]


@pytest.fixture(scope="module")
def greedy(llama):
    """One greedy sampler shared by the tests below (its programs compile once)."""
    return Sampler(llama, batch_size=4, cache_len=96, turn_len=16, sampling=GREEDY)


def test_bucketing():
    assert [bucket_length(n) for n in (1, 16, 17, 100, 512, 513, 1100)] == [
        16,
        16,
        32,
        128,
        512,
        1024,
        1536,
    ]
    assert [bucket_rows(n, 12) for n in (1, 2, 4, 5, 9, 12)] == [1, 4, 4, 12, 12, 12]
    assert [bucket_rows(n, 64) for n in (1, 3, 5, 17, 64)] == [1, 4, 16, 64, 64]


def test_greedy_equals_full_forward_mixed_lengths(llama, greedy):
    n_new = 9
    out = greedy.generate(PROMPTS, max_new_tokens=n_new)  # 5 prompts: two batches, padded rows
    for prompt, ids, reason in zip(PROMPTS, out.completion_ids, out.stop_reasons):
        ref, ref_reason = full_forward_greedy(llama, prompt, n_new)
        assert ids.tolist() == ref
        assert reason == ref_reason == "length"
    assert len(set(tuple(c.tolist()) for c in out.completion_ids)) > 1  # not a degenerate model


def test_chunked_decode_and_appended_chunk_match_full_forward(llama, greedy):
    """Decode in chunks of 3 steps; then append an 'observation' to row 1 only (prefill of the
    new tokens into the cache) and continue: equals the uncached forward on the concatenation."""
    sampler = greedy
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    state = sampler.init_state(0)
    state = sampler.extend(state, [0, 1, 2], prompts, reset=True, uids=[0, 1, 2], max_tokens=7)
    for _ in range(4):
        state, _, _ = sampler.decode(state, 3)
    first = jax.device_get(state.tokens)[:, :7]
    for i, p in enumerate(prompts):
        assert first[i].tolist() == full_forward_greedy(llama, p, 7)[0]
    obs = [77, 78, 79, 80, 81]
    # the row's pending token (last generated, not yet in the cache) goes first
    state = sampler.extend(state, [1], [[int(first[1, -1])] + obs], reset=False, max_tokens=6)
    state, steps, busy = sampler.decode(state, 20)
    second = jax.device_get(state.tokens)[1, :6].tolist()
    full = prompts[1] + first[1].tolist() + obs
    assert second == full_forward_greedy(llama, full, 6)[0]
    assert int(steps) == 5 and int(busy) == 5  # only row 1 was active (rows 0, 2 stopped, 3 empty)
    # rows 0 and 2 untouched by the append
    assert jax.device_get(state.tokens)[0, :7].tolist() == first[0].tolist()


def test_eos_and_stop_sequences(llama, greedy):
    ref = {i: full_forward_greedy(llama, p, 10)[0] for i, p in enumerate(PROMPTS)}
    # a stop sequence taken from inside row 1's continuation, an eos taken from row 3's
    stop_seq = ref[1][4:6]
    eos = ref[3][5]
    greedy.set_stops(eos_ids=[eos], stop_sequences=[[250, 251, 252], stop_seq])
    try:
        out = greedy.generate(PROMPTS, max_new_tokens=10)
    finally:
        greedy.set_stops()
    for i, p in enumerate(PROMPTS):
        exp, exp_reason = full_forward_greedy(llama, p, 10, eos=(eos,), stop_seqs=(stop_seq,))
        assert out.completion_ids[i].tolist() == exp
        assert out.stop_reasons[i] == exp_reason
        assert out.stop_which[i] == (1 if exp_reason == "stop_sequence" else -1)
    assert out.stop_reasons[1] == "stop_sequence" and out.stop_reasons[3] in (
        "eos",
        "stop_sequence",
    )


def test_max_total_length_stops_rows(greedy):
    sampler = greedy
    state = sampler.init_state(0)
    state = sampler.extend(state, [0, 1], [PROMPTS[1], PROMPTS[0]], reset=True, max_total=[24, 32])
    state, _, _ = sampler.decode(state, 50)
    num, reason, index = jax.device_get((state.num_tokens, state.stop_reason, state.cache_index))
    assert num[:2].tolist() == [24 - 21, 16]  # 21-token prompt + 3 = 24 tokens in total
    assert reason[:2].tolist() == [stops.LENGTH, stops.LENGTH]
    assert index[0] + 1 == 24


def test_compiles_once_per_bucket(llama):
    """extend compiles once per (rows, length) bucket: (R=4, T=16) and (R=1, T=32); decode once."""
    chex.clear_trace_counter()
    counts = {}
    limits = {"_extend": 2, "_decode": 1}

    def wrapper(fn):
        name = fn.__name__
        counts[name] = 0
        limited = chex.assert_max_traces(fn, n=limits[name])

        def counting(*args):  # jit calls the Python function once per trace
            counts[name] += 1
            return limited(*args)

        return counting

    sampler = Sampler(
        llama,
        batch_size=4,
        cache_len=64,
        turn_len=8,
        sampling=SamplingConfig(temperature=0.7),
        jit_wrapper=wrapper,
    )
    for seed, prompts in enumerate(
        [[[1, 2, 3]] * 4, [[4] * 9, [5] * 12, [6], [7, 8]], [[3] * 14] * 3]
    ):
        sampler.generate(prompts, max_new_tokens=6, seed=seed)
    sampler.generate([[2] * 20], max_new_tokens=4)
    assert counts == {"_extend": 2, "_decode": 1}


def test_sampling_depends_on_seed_and_uid_not_on_slot(llama, sampler_t1):
    temp = SamplingConfig(temperature=1.0, top_k=50)
    big = Sampler(llama, batch_size=4, cache_len=64, turn_len=12, sampling=temp)
    small = sampler_t1
    prompts = PROMPTS[:4]
    a = big.generate(prompts, max_new_tokens=10, seed=3)
    b = small.generate(prompts, max_new_tokens=10, seed=3)
    c = small.generate(prompts[::-1], max_new_tokens=10, seed=3, uids=[3, 2, 1, 0])
    d = big.generate(prompts, max_new_tokens=10, seed=4)

    def ids(out):
        return [x.tolist() for x in out.completion_ids]

    assert ids(a) == ids(b) == ids(c)[::-1]
    assert ids(a) != ids(d)
    # the sampler's log-probs are the processed distribution's: recompute them from the model
    full_logits = reference_logits(llama)
    for prompt, toks, lps in zip(prompts, a.completion_ids, a.sample_logprobs):
        seq = list(prompt) + toks.tolist()
        z = np.stack([full_logits(seq[:n]) for n in range(len(prompt), len(seq))]).astype(
            np.float64
        )
        kth = np.sort(z, -1)[:, -50][:, None]
        z = np.where(z >= kth, z, -np.inf)
        logq = (
            z
            - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - z.max(-1, keepdims=True)
        )
        np.testing.assert_allclose(lps, logq[np.arange(len(toks)), toks], atol=2e-4)


def test_kv_length_buckets_match_full_forward_and_compile_once_per_bucket(llama):
    """Decode chunks whose attention reads only a KV bucket >= the longest live row give the
    full-forward greedy tokens (and the whole-cache sampler's log-probs); ``_decode`` traces
    once per bucket visited (16, 32, 64 here), never again for a repeated run."""
    chex.clear_trace_counter()
    traces = {"_extend": 0, "_decode": 0}

    def wrapper(fn):
        name = fn.__name__

        def counting(*args):
            traces[name] += 1
            return fn(*args)

        return counting

    bucketed = Sampler(
        llama, batch_size=4, cache_len=96, turn_len=40, sampling=GREEDY, kv_min_bucket=16,
        jit_wrapper=wrapper,
    )
    whole = Sampler(
        llama, batch_size=4, cache_len=96, turn_len=40, sampling=GREEDY, kv_min_bucket=None
    )
    prompts = PROMPTS[:4]  # longest 21 tokens: 21 + 40 new crosses buckets 32 and 64
    out = bucketed.generate(prompts, max_new_tokens=40)
    ref = whole.generate(prompts, max_new_tokens=40)
    for i, p in enumerate(prompts):
        want, _ = full_forward_greedy(llama, p, 40)
        assert out.completion_ids[i].tolist() == want
        np.testing.assert_allclose(out.sample_logprobs[i], ref.sample_logprobs[i], atol=1e-5)
    assert traces["_decode"] == 2  # buckets 32 and 64
    bucketed.generate(prompts, max_new_tokens=40)
    assert traces["_decode"] == 2
    short = bucketed.generate([[3], [5, 6]], max_new_tokens=8)  # 2 + 8 slots: bucket 16
    assert traces["_decode"] == 3
    for i, p in enumerate([[3], [5, 6]]):
        assert short.completion_ids[i].tolist() == full_forward_greedy(llama, p, 8)[0]


def test_decode_updates_the_donated_cache_in_place(llama):
    """The compiled decode program aliases the donated cache to its output and copies no
    cache-sized buffer (no per-step copy of K/V)."""
    sampler = Sampler(llama, batch_size=4, cache_len=64, turn_len=8, sampling=GREEDY)
    state = sampler.init_state(0)
    hlo = sampler._decode.lower(
        sampler.params, state, np.int32(4), *sampler._stop_arrays, 64
    ).compile().as_text()
    dims = ",".join(str(d) for d in state.cache.k.shape)
    assert "input_output_alias" in hlo
    whole_cache_copy = re.compile(r"= f32\[" + dims + r"\]\S* copy\(")
    assert [ln for ln in hlo.splitlines() if whole_cache_copy.search(ln)] == []
