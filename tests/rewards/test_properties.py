"""Property tests (hypothesis) of the jitted ToolRL reward and the parsers."""

from __future__ import annotations

import itertools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolrl_jax.rewards.config import VARIANTS, ToolRLRewardConfig
from toolrl_jax.rewards.encode import encode_batch, format_ok, think_word_count
from toolrl_jax.toolcalls.parse import parse_completion, parse_tool_calls
from toolrl_jax.rewards.reference import reference_reward
from toolrl_jax.rewards.toolrl import (
    reward_params,
    reward_ranges,
    toolrl_reward,
    toolrl_reward_core,
)

B = 8  # every example is padded to this batch: one compiled program per config shape
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(st.integers(-2, 2), st.sampled_from(["1", "a", "", " a"]), st.booleans(),
                   st.sampled_from([1.0, 0.5, -0.0]), st.none(), st.lists(st.integers(0, 2), max_size=2))
params = st.dictionaries(st.sampled_from(["x", "y", "z", "w"]), values, max_size=3)
call = st.fixed_dictionaries({"name": st.sampled_from(["A", "B", "C"]), "parameters": params})
calls = st.lists(call, min_size=1, max_size=4)


def _text(cs, think=" t "):
    return f"<think>{think}</think>\n<tool_call>\n" + "\n".join(json.dumps(c) for c in cs) + "\n</tool_call>"


def _score(pairs, cfg, step=0):
    pad = list(pairs) + [pairs[0]] * (B - len(pairs))
    batch = encode_batch([c for c, _ in pad], [g for _, g in pad], cfg)
    out = toolrl_reward(batch, step, cfg)
    return {f: np.asarray(getattr(out, f))[: len(pairs)] for f in out._fields}


def _is_permutation(a, b):
    return len(a) == len(b) and any(list(p) == list(b) for p in itertools.permutations(a))


@SETTINGS
@given(gt=calls, pd=calls, variant=st.sampled_from(list(VARIANTS)), step=st.integers(0, 200),
       greedy=st.booleans())
def test_reward_within_range(gt, pd, variant, step, greedy):
    cfg = ToolRLRewardConfig(variant=variant, matching="greedy" if greedy else "optimal")
    f_lo, f_hi, c_lo, c_hi = (float(v) for v in reward_ranges(step, cfg))
    r = _score([(_text(pd), _text(gt)), (_text(gt), _text(gt))], cfg, step)
    for i in range(2):
        assert r["format"][i] in (np.float32(f_lo), np.float32(f_hi))
        assert c_lo - 1e-6 <= r["correctness"][i] <= c_hi + 1e-6
        assert 0.0 <= r["length"][i] <= 1.0
        np.testing.assert_allclose(r["total"][i], r["format"][i] + r["correctness"][i] + r["length"][i], atol=1e-6)
    np.testing.assert_allclose(r["correctness"][1], c_hi, atol=1e-6)  # exact match scores the max


@SETTINGS
@given(gt=calls, pd=calls, data=st.data(), variant=st.sampled_from(["original", "intermediate", "coarse"]))
def test_optimal_matching_invariant_to_call_order(gt, pd, data, variant):
    cfg = ToolRLRewardConfig(variant=variant)
    perm = data.draw(st.permutations(pd))
    gperm = data.draw(st.permutations(gt))
    r = _score([(_text(pd), _text(gt)), (_text(perm), _text(gt)), (_text(perm), _text(gperm))], cfg)
    if variant == "coarse":  # coarse is all-or-nothing on the ordered list; only check the range
        return
    np.testing.assert_allclose(r["correctness"][1], r["correctness"][0], atol=1e-5)
    np.testing.assert_allclose(r["correctness"][2], r["correctness"][0], atol=1e-5)


@SETTINGS
@given(gt=calls, pd=calls, data=st.data())
def test_maximal_only_for_exact_match(gt, pd, data):
    cfg = ToolRLRewardConfig()
    if data.draw(st.booleans()):
        pd = data.draw(st.permutations(gt))
    r = _score([(_text(pd), _text(gt))], cfg)
    is_max = r["correctness"][0] >= 3.0 - 1e-6
    assert is_max == _is_permutation(pd, gt)
    # and the plain-Python reference agrees
    ref = reference_reward(_text(pd), _text(gt), 0, matching="optimal", released_quirks=False,
                           response_only="no_call")
    np.testing.assert_allclose(r["correctness"][0], ref[2], atol=1e-6)


nasty = st.lists(st.sampled_from([
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<response>", "</response>", "\n", " ",
    '{"name": "A", "parameters": {"x": 1}}', '{"name": ', '[', ']', '{', '}', '"', "\\", "NaN",
    "f(a=1)", "[f(", "import os", "\u0000", "\ud800", "1e999999", '{"name": ["x"], "parameters": []}',
    '{"name": "A", "arguments": "{\\"x\\": 1}"}', "math.factorial(n=5)", "**x", "a" * 50,
]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), nasty))
def test_parsers_never_raise(text):
    for syntax in ("auto", "toolrl", "hermes", "python"):
        p = parse_completion(text, syntax)
        assert isinstance(p.ok, bool) and isinstance(p.reason, str)
        assert p.ok or p.reason
        t = parse_tool_calls(text, syntax)
        assert t.ok or t.reason
    for gt in ("<think> a </think>\n<tool_call>\n{}\n</tool_call>", "<response>x</response>", "", "<tool_call><response>"):
        assert isinstance(format_ok(text.strip(), gt), bool)
    think_word_count(text)


@settings(max_examples=100, deadline=None)
@given(text=st.one_of(st.text(), nasty))
def test_encoder_never_raises_on_completions(text):
    gt = _text([{"name": "A", "parameters": {"x": 1}}])
    for cfg in (ToolRLRewardConfig.compat_toolrl(), ToolRLRewardConfig(syntax="auto", equality="lenient")):
        batch, reasons = encode_batch([text], [gt], cfg, return_reasons=True)
        assert batch.pd_ok.shape == (1,)
        assert bool(batch.pd_ok[0]) or reasons[0]


# ------------------------------------------------------------------------ jit / vmap
def test_compiles_once_per_shape():
    cfg = ToolRLRewardConfig()
    gt = _text([{"name": "A", "parameters": {"x": 1}}])
    comps = [_text([{"name": "A", "parameters": {"x": i}}]) for i in range(B)]
    batch = encode_batch(comps, [gt] * B, cfg)
    chex.clear_trace_counter()
    fn = jax.jit(chex.assert_max_traces(toolrl_reward_core, n=1), static_argnames=("matching",))
    for step, variant in [(0, "original"), (7, "dynamic"), (31, "two_stage"), (100, "dynamic_length"),
                          (3, "finegrained"), (9, "coarse")]:
        fn(batch, jnp.int32(step), reward_params(cfg.replace(variant=variant)), matching="optimal")
    other = encode_batch(comps[:4], [gt] * 4, cfg)
    with pytest.raises(AssertionError):
        fn(other, jnp.int32(0), reward_params(cfg), matching="optimal")


def test_jit_and_vmap_compose():
    cfg = ToolRLRewardConfig(variant="dynamic_length")
    gt = _text([{"name": "A", "parameters": {"x": 1}}, {"name": "B", "parameters": {}}])
    comps = [_text([{"name": "A", "parameters": {"x": i % 3}}], think=" w" * (i * 40)) for i in range(2 * B)]
    b1 = encode_batch(comps[:B], [gt] * B, cfg)
    b2 = encode_batch(comps[B:], [gt] * B, cfg)
    stacked = jax.tree.map(lambda a, b: np.stack([a, b]), b1, b2)
    steps = jnp.array([10, 90])
    out = jax.jit(jax.vmap(lambda b, s: toolrl_reward(b, s, cfg)))(stacked, steps)
    for i, (b, s) in enumerate([(b1, 10), (b2, 90)]):
        want = toolrl_reward(b, s, cfg)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], out), want, atol=1e-6)
    chex.assert_shape(out.total, (2, B))
