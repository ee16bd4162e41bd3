"""Parsers (three call syntaxes, failure reasons, bounded work) and the encoder's equality ids."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.rewards.config import ToolRLRewardConfig
from toolrl_jax.rewards.encode import canonical, encode_batch, format_ok, think_word_count, value_id
from toolrl_jax.toolcalls.parse import (
    ToolCall,
    first_tool_call_block,
    parse_completion,
    parse_tool_calls,
    tool_call_blocks,
)


# ------------------------------------------------------------------------ syntaxes
def test_toolrl_json_lines():
    text = ('<think> go </think>\n<tool_call>\n{"name": "A", "parameters": {"x": "1"}}\n'
            '{"name": "B", "parameters": {}}\n</tool_call>\n<response> ok </response>')
    p = parse_completion(text, "toolrl")
    assert p.ok and p.think == " go " and p.response == " ok "
    assert p.tool_calls == (ToolCall("A", {"x": "1"}), ToolCall("B", {}))


def test_hermes_blocks_lists_and_string_arguments():
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n[{"name": "a", "arguments": "{\\"k\\": [1, 2]}"},\n {"name": "b", "arguments": {}}]\n</tool_call>')
    p = parse_completion(text, "hermes")
    assert p.ok, p.reason
    assert [c.name for c in p.tool_calls] == ["get_weather", "a", "b"]
    assert p.tool_calls[1].arguments == {"k": [1, 2]}
    pretty = "<tool_call>\n" + json.dumps({"name": "x", "arguments": {"a": 1}}, indent=2) + "\n</tool_call>"
    assert parse_completion(pretty, "hermes").tool_calls == (ToolCall("x", {"a": 1}),)
    assert parse_completion(pretty, "auto").tool_calls == (ToolCall("x", {"a": 1}),)
    assert not parse_completion(pretty, "toolrl").ok  # JSON Lines: a pretty object is not one line


def test_python_call_syntax():
    r = parse_tool_calls('[math.factorial(number=5), spotify.play(artist="Taylor Swift", duration=20, '
                         'tags=["a", 1.5], opts={"x": None, "y": True})]', "python")
    assert r.ok, r.reason
    assert r.calls[0] == ToolCall("math.factorial", {"number": 5})
    assert r.calls[1].arguments == {"artist": "Taylor Swift", "duration": 20, "tags": ["a", 1.5],
                                    "opts": {"x": None, "y": True}}
    assert parse_tool_calls("f()", "python").calls == (ToolCall("f", {}),)
    for bad, why in [("f(1)", "positional"), ("f(a=g())", "literal"), ("f(a=__import__('os'))", "literal"),
                     ("f(**k)", "kwargs"), ("x + 1", "function call"), ("(lambda: 1)(a=1)", "dotted"),
                     ("f(a=", "Python")]:
        res = parse_tool_calls(bad, "python")
        assert not res.ok and why in res.reason, (bad, res.reason)
    assert parse_tool_calls('[f(a=1)]', "auto").syntax == "python"


@pytest.mark.parametrize("text,reason", [
    ("<think>x</think>\n<tool_call>\n{\"name\": \"A\", \"parameters\": {}}", "unclosed"),
    ("<tool_call>\n{\"name\": \"A\"}\n</tool_call>", "missing 'parameters'"),
    ("<tool_call>\n{\"parameters\": {}}\n</tool_call>", "missing 'name'"),
    ("<tool_call>\n[1]\n</tool_call>", "not a JSON object"),
    ("<tool_call>\n{\"name\": 3, \"parameters\": {}}\n</tool_call>", "not a string"),
    ("<tool_call>\n{\"name\": \"A\", \"parameters\": []}\n</tool_call>", "not an object"),
    ("<tool_call>\n{\"name\": \"A\",\n</tool_call>", "invalid JSON"),
])
def test_failure_reasons(text, reason):
    p = parse_completion(text, "toolrl")
    assert not p.ok and reason in p.reason, p.reason


def test_released_block_extraction_rule():
    # text.split("<tool_call>")[1].split("</tool_call>")[0], including its odd cases
    for text in ["a<tool_call>x</tool_call>y<tool_call>z</tool_call>", "</tool_call>a<tool_call>b",
                 "<tool_call>a<tool_call>b</tool_call>", "<tool_call></tool_call>"]:
        assert first_tool_call_block(text) == text.split("<tool_call>")[1].split("</tool_call>")[0]
    assert first_tool_call_block("<tool_call>x") is None
    assert tool_call_blocks("<tool_call>a</tool_call><tool_call>b") == (("a",), "unclosed <tool_call>")


def test_bounded_work_on_adversarial_input():
    big = [
        "<think>" + "</think>\n<tool_call>\n" * 20000,
        "<tool_call>\n" + "[" * 200000 + "\n</tool_call>",
        "f(a=" + "[" * 99000 + ")",
        "<think>" + "<think> a " * 50000,
        "<tool_call>\n" + '{"name": "A", "parameters": {"x": 1}}\n' * 20000 + "</tool_call>",
        "x" * 3_000_000,
    ]
    gts = ["<tool_call>\n{}\n</tool_call>", "<response>r</response>", "<tool_call><response>", ""]
    t0 = time.perf_counter()
    for text in big:
        for syntax in ("auto", "toolrl", "hermes", "python"):
            parse_completion(text, syntax)
        for gt in gts:
            format_ok(text, gt)
        think_word_count(text)
    assert time.perf_counter() - t0 < 10.0
    assert not parse_completion("x" * 3_000_000, "auto").ok


# ------------------------------------------------------------------------ format / length
def test_format_patterns_follow_ground_truth_tags():
    call = '<tool_call>\n{"name": "A", "parameters": {}}\n</tool_call>'
    gt_call, gt_resp = f"<think>t</think>\n{call}", "<think>t</think>\n<response>r</response>"
    gt_both = f"{gt_call}\n<response>r</response>"
    assert format_ok(f"<think>a</think>\n{call}", gt_call)
    assert not format_ok(f"<think>a</think>\n{call}\n<response>r</response>", gt_call)
    assert format_ok(f"<think>a</think>\n{call}\n<response>r</response>", gt_both)
    assert format_ok("<think>a</think>\n<response>r</response>", gt_resp)
    assert not format_ok("<think>a</think>\n<response>r</response><response>", gt_resp)
    assert not format_ok(f"{call}", gt_call)
    assert not format_ok(f"<think>a</think>\n{call}{call}", gt_call)
    assert format_ok("<think>a</think>", "<think>t</think>")
    assert think_word_count("<think> a b\nc </think>") == (True, 3)
    assert think_word_count("<think> a </think> <think> x y </think>") == (True, 2)  # last block
    assert think_word_count("<think> a b") == (False, 0)


# ------------------------------------------------------------------------ equality ids
STRICT_EQUAL = [(1, 1.0), (True, 1), (False, 0.0), (-0.0, 0), ({"a": 1, "b": [1, 2]}, {"b": [1.0, 2], "a": True}),
                (float("inf"), float("inf")), ("é", "é"), (None, None),
                (json.loads("[NaN]"), json.loads("[NaN]"))]  # json's shared NaN: identity inside containers
STRICT_DIFFERENT = [("1", 1), (1, 1.0000001), (10**30, 1e30), ([1, 2], [2, 1]), ({"a": 1}, {"a": 1, "b": 2}),
                    (float("nan"), float("nan")), (None, "null"), ([], {}), (" a", "a"), ("True", True)]


@pytest.mark.parametrize("a,b", STRICT_EQUAL)
def test_strict_equal_ids_match_python(a, b):
    assert a == b
    assert value_id(a) == value_id(b)


@pytest.mark.parametrize("a,b", STRICT_DIFFERENT)
def test_strict_different_ids_match_python(a, b):
    assert a != b
    assert value_id(a) != value_id(b)


def test_lenient_equality():
    eq = [("1", 1), (1.0, 1), (" a ", "a"), ("True", True), ("2.50", 2.5), ({"x": "3"}, {"x": 3}),
          (0.1 + 0.2, 0.3)]
    ne = [(True, 1), ("a", "A"), ("1", 2), (float("nan"), float("nan"))]
    for a, b in eq:
        assert value_id(a, "lenient") == value_id(b, "lenient"), (a, b)
    for a, b in ne:
        assert value_id(a, "lenient") != value_id(b, "lenient"), (a, b)
    with pytest.raises(ValueError):
        nested = []
        for _ in range(200):
            nested = [nested]
        canonical(nested)


# ------------------------------------------------------------------------ shapes
def _text(calls):
    return "<think>t</think>\n<tool_call>\n" + "\n".join(json.dumps(c) for c in calls) + "\n</tool_call>"


def test_overflow_is_reported_not_cut():
    cfg = ToolRLRewardConfig(max_calls=2, max_args=2)
    gt = _text([{"name": "A", "parameters": {"x": 1}}])
    pd = _text([{"name": "A", "parameters": {"x": 1}}] * 3)
    wide = _text([{"name": "A", "parameters": {"x": 1, "y": 2, "z": 3}}])
    batch, reasons = encode_batch([pd, wide, gt], [gt] * 3, cfg, return_reasons=True)
    np.testing.assert_array_equal(batch.pd_overflow, [True, True, False])
    assert "max_calls=2" in reasons[0]
    from toolrl_jax.rewards.toolrl import toolrl_reward
    out = toolrl_reward(batch, 0, cfg)
    np.testing.assert_allclose(np.asarray(out.correctness), [-3, -3, 3])
    with pytest.raises(ConfigError, match="max_calls"):
        encode_batch([gt], [pd], cfg)


def test_bad_ground_truth_and_config_errors():
    cfg = ToolRLRewardConfig()
    with pytest.raises(DataError):
        encode_batch(["x"], ["<tool_call>\nnot json\n</tool_call>"], cfg)
    with pytest.raises(DataError):
        encode_batch(["x", "y"], ["z"], cfg)
    with pytest.raises(ConfigError, match="variant"):
        ToolRLRewardConfig(variant="nope")
    with pytest.raises(ConfigError):
        ToolRLRewardConfig(released_quirks=True, syntax="hermes")
    with pytest.raises(ConfigError):
        ToolRLRewardConfig(correctness_range=(3, -3))


def test_config_from_mapping():
    cfg = ToolRLRewardConfig.from_mapping({"variant": "dynamic", "correctness_range": [-2, 2]})
    assert cfg.variant == "dynamic" and cfg.correctness_range == (-2.0, 2.0)
    compat = ToolRLRewardConfig.from_mapping({"compat": "toolrl", "variant": "coarse"})
    assert compat == ToolRLRewardConfig.compat_toolrl("coarse")
    with pytest.raises(ConfigError, match="did you mean 'matching'"):
        ToolRLRewardConfig.from_mapping({"matchin": "greedy"})
    hash(cfg)  # static jit argument


def test_ground_truth_fallback_to_last_block():
    """Ground truths whose <think> mentions <tool_call> (17 in rlla_sft.json) read the last block."""
    gt = ('<think> put it in <tool_call> tags </think>\n<tool_call>\n{"name": "A", "parameters": {"x": 1}}'
          '\n</tool_call>')
    batch = encode_batch([gt], [gt], ToolRLRewardConfig())
    assert batch.gt_call_valid[0].sum() == 1


def test_encode_reuses_parsed_completions():
    gt = _text([{"name": "A", "parameters": {"x": 1}}, {"name": "B", "parameters": {}}])
    texts = [_text([{"name": "A", "parameters": {"x": 1}}]), gt, "<think>t</think>\n<response>r</response>",
             "<tool_call>\n{\"name\": \"A\", \"arguments\": {\"x\": 1}}\n</tool_call>"]
    for syntax in ("toolrl", "auto", "hermes"):
        cfg = ToolRLRewardConfig(syntax=syntax)
        a = encode_batch(texts, [gt] * 4, cfg)
        b = encode_batch([parse_completion(t, "auto") for t in texts], [gt] * 4, cfg)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_score_texts_pads_and_checks_lengths():
    from toolrl_jax.rewards.toolrl import score_texts

    gt = _text([{"name": "A", "parameters": {"x": 1}}])
    comps = [gt, _text([{"name": "A", "parameters": {"x": 2}}]), "<think>t</think>\n<response>r</response>"]
    out = score_texts(comps, [gt] * 3, 0, ToolRLRewardConfig.compat_toolrl())
    # x=2: names 1 + keys 1 + no value, S_max 3 -> 6 * 2 / 3 - 3 = 1
    np.testing.assert_allclose(out["correctness"], [3.0, 1.0, -3.0], atol=1e-6)
    with pytest.raises(DataError):
        score_texts(comps, [gt], 0)


def test_encode_parallel_and_repeated_texts_give_the_same_arrays():
    """Repeated completions (encoded once and gathered) and a 2-process split give exactly the
    arrays of encoding every sample on its own."""
    from toolrl_jax.rewards.config import ToolRLRewardConfig as _Cfg
    from toolrl_jax.rewards.encode import encode_batch as _encode
    from toolrl_jax.rewards.toolrl import encode_parallel

    gt = '<think>x</think>\n<tool_call>\n{"name": "A", "parameters": {"x": "1", "y": [1, 2]}}\n</tool_call>'
    good = '<think>ok</think>\n<tool_call>\n{"name": "A", "parameters": {"x": "1", "y": [1, 2.0]}}\n</tool_call>'
    other = '<think>ok</think>\n<tool_call>\n{"name": "B", "parameters": {}}\n{"name": "A", "parameters": {"x": 1}}\n</tool_call>'
    comps = [good, other, "no call", good, other, good] * 4
    gts = [gt, gt, gt, "<think>t</think>\n<response>r</response>", gt, gt] * 4
    for cfg in (_Cfg(), _Cfg.compat_toolrl()):
        whole = _encode(comps, gts, cfg)
        singles = [_encode([c], [g], cfg) for c, g in zip(comps, gts)]
        split = encode_parallel(comps, gts, cfg, workers=2, min_per_worker=8)
        for field, got in zip(whole._fields, whole):
            want = np.concatenate([getattr(s, field) for s in singles])
            np.testing.assert_array_equal(got, want, err_msg=field)
            np.testing.assert_array_equal(getattr(split, field), want, err_msg=field)
