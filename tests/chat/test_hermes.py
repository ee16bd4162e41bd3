"""Hermes / Qwen tool format: rendering (checked against Qwen3's template) and defensive parsing."""

from hypothesis import given, settings
from hypothesis import strategies as st

from toolrl_jax.chat.hermes import (
    format_tool_call,
    parse_tool_calls,
    render_tool_responses,
    tool_call_name_and_arguments,
)
from toolrl_jax.chat.templates import apply_chat_template_ids, detect_template


def test_tool_call_and_responses_match_qwen3_template(qwen3_tok):
    call = {"type": "function", "function": {"name": "search", "arguments": {"q": "café", "n": 3}}}
    messages = [
        {"role": "user", "content": "find"},
        {"role": "assistant", "content": "Searching.", "tool_calls": [call, call]},
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
    ]
    ref = qwen3_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected_call = '<tool_call>\n{"name": "search", "arguments": {"q": "café", "n": 3}}\n</tool_call>'
    assert format_tool_call("search", {"q": "café", "n": 3}) == expected_call
    assert f"Searching.\n{expected_call}\n{expected_call}<|im_end|>" in ref
    assert f"<|im_start|>user\n{render_tool_responses(['r1', 'r2'])}<|im_end|>\n" in ref
    template = detect_template(qwen3_tok)
    assert template.render_prompt(qwen3_tok, messages) == apply_chat_template_ids(
        qwen3_tok, messages, add_generation_prompt=True
    )


def test_string_arguments_inserted_verbatim():
    assert format_tool_call("f", '{"a":1}') == '<tool_call>\n{"name": "f", "arguments": {"a":1}}\n</tool_call>'
    assert tool_call_name_and_arguments({"name": "g", "parameters": {"x": 1}}) == ("g", {"x": 1})


def test_parse_tool_calls_hand_cases():
    text = (
        "<think>x</think>\n"
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        "<tool_call>not json</tool_call>"
        '<tool_call>{"name": 3, "arguments": {}}</tool_call>'
        '<tool_call>{"name": "b", "arguments": "{\\"y\\": 2}"}</tool_call>'
        '<tool_call>{"name": "c", "parameters": {}}</tool_call>'
        '<tool_call>{"name": "d", "arguments": [1]}</tool_call>'
        "<tool_call>unclosed"
    )
    assert parse_tool_calls(text) == [
        {"name": "a", "arguments": {"x": 1}},
        {"name": "b", "arguments": {"y": 2}},
        {"name": "c", "arguments": {}},
    ]
    assert parse_tool_calls(None) == []


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('<>/tool_call{}[]"nameargs:,1 \\\n')), max_size=80))
def test_parse_tool_calls_never_raises(text):
    out = parse_tool_calls(text)
    assert all(isinstance(c["name"], str) and isinstance(c["arguments"], dict) for c in out)
