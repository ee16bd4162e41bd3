"""Chat templates as token ids == the real tokenizers' own Jinja templates (apply_chat_template).

References: Qwen3's tokenizer_config.json template, SmolLM2's GGUF template, and Meta's Llama 3.2
template (attached by load_tokenizer, since the packaged Llama tokenizer has none).
"""

import logging

import pytest

from toolrl_jax.chat.hermes import render_tools_system
from toolrl_jax.chat.templates import (
    QWEN3_NO_THINK_PREFIX,
    ChatMLTemplate,
    HFChatTemplate,
    Llama3Template,
    apply_chat_template_ids,
    detect_template,
)
from toolrl_jax.errors import ConfigError

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
WEATHER_CALL = {
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}},
}
CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What's the weather in Paris?"}],
    "system_user": [SYSTEM, {"role": "user", "content": "Hi!"}],
    "multi_turn": [
        SYSTEM,
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "It is sunny, 21°C."},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "whitespace_digits": [
        {"role": "system", "content": "  padded system prompt\n"},
        {"role": "user", "content": "\n  leading newline 123\tand tab "},
        {"role": "assistant", "content": " 4567 \n"},
        {"role": "user", "content": "ok 日本語 🙂"},
    ],
    "tool_results": [
        SYSTEM,
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Looking both up."},
        {"role": "tool", "content": '{"temp": 21, "sky": "sunny"}'},
        {"role": "tool", "content": "rain, 14°C"},
    ],
    "tool_calls": [
        SYSTEM,
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": '{"temp": 21}'},
    ],
    "final_assistant": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nsimple sum\n</think>\n\n<response> 4 </response>"},
    ],
}
# SmolLM2's template ignores `tool_calls`; we render them in the hermes form for any ChatML.
UNSUPPORTED = {("smollm2", "tool_calls")}


def _hf_kwargs(template):
    return {"date_string": template.date_string} if isinstance(template, Llama3Template) else {}


def test_detect_template_families(qwen3_tok, llama_tok, smol_tok):
    qwen = detect_template(qwen3_tok)
    assert isinstance(qwen, ChatMLTemplate)
    assert qwen.tool_format == "hermes" and qwen.default_system is None
    smol = detect_template(smol_tok)
    assert isinstance(smol, ChatMLTemplate) and smol.tool_format == "role"
    assert smol.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert isinstance(detect_template(llama_tok), Llama3Template)


@pytest.mark.parametrize("conv_name", sorted(CONVERSATIONS))
def test_render_prompt_equals_apply_chat_template(any_tok, conv_name):
    name, tok = any_tok
    if (name, conv_name) in UNSUPPORTED:
        pytest.skip("template does not render this")
    template = detect_template(tok)
    messages = CONVERSATIONS[conv_name]
    for gen in (True, False):
        if conv_name == "final_assistant" and gen:
            continue
        ours = template.render_prompt(tok, messages, add_generation_prompt=gen)
        ref = apply_chat_template_ids(tok, messages, add_generation_prompt=gen, **_hf_kwargs(template))
        assert ours == ref, (name, conv_name, gen, tok.decode(ours), tok.decode(ref))
        text = template.render_text(messages, add_generation_prompt=gen)
        assert text == tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen, **_hf_kwargs(template)
        )
        assert tok.encode(text, add_special_tokens=False) == ours


def test_generation_prompt_and_end_of_turn(qwen3_tok, llama_tok, smol_tok):
    for tok, header, eot in (
        (qwen3_tok, "<|im_start|>assistant\n", "<|im_end|>"),
        (smol_tok, "<|im_start|>assistant\n", "<|im_end|>"),
        (llama_tok, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ):
        template = detect_template(tok)
        assert tok.decode(template.generation_prompt(tok)) == header
        eot_ids = template.end_of_turn_ids(tok)
        assert eot_ids[0] == tok.convert_tokens_to_ids(eot)
        assert all(isinstance(i, int) for i in eot_ids)


def test_render_message_pieces_concatenate_to_prompt(any_tok):
    name, tok = any_tok
    template = detect_template(tok)
    messages = CONVERSATIONS["multi_turn"]
    ids = template.conversation_start(tok, messages[0]["content"])
    for m in messages[1:]:
        ids += template.render_message(tok, m["role"], m["content"])
    ids += template.generation_prompt(tok)
    assert ids == apply_chat_template_ids(tok, messages, add_generation_prompt=True,
                                          **_hf_kwargs(template))


def test_qwen3_tools_system_prompt(qwen3_tok):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city (°C).",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "description": "City name"}},
                    "required": ["city"],
                },
            },
        },
        {"type": "function", "function": {"name": "now", "description": "Time.", "parameters": {}}},
    ]
    template = detect_template(qwen3_tok)
    for messages in (CONVERSATIONS["tool_calls"], CONVERSATIONS["tool_calls"][1:]):
        has_system = messages[0]["role"] == "system"
        system_text = render_tools_system(tools, messages[0]["content"] if has_system else None)
        ours_messages = [{"role": "system", "content": system_text}] + messages[int(has_system):]
        ours = template.render_prompt(qwen3_tok, ours_messages)
        ref = apply_chat_template_ids(qwen3_tok, messages, tools=tools, add_generation_prompt=True)
        assert ours == ref


def test_qwen3_no_thinking_generation_prefix(qwen3_tok):
    template = ChatMLTemplate(tool_format="hermes", generation_prefix=QWEN3_NO_THINK_PREFIX)
    messages = CONVERSATIONS["system_user"]
    assert template.render_prompt(qwen3_tok, messages) == apply_chat_template_ids(
        qwen3_tok, messages, add_generation_prompt=True, enable_thinking=False
    )


def test_qwen3_rewrites_earlier_think_blocks_we_do_not(qwen3_tok):
    """Documented exception: Qwen3's template drops <think> of turns before the last query."""
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nsecret reasoning\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
    ]
    template = detect_template(qwen3_tok)
    hf_text = qwen3_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = template.render_text(messages)
    assert "secret reasoning" not in hf_text
    assert "secret reasoning" in ours
    assert ours.replace("<think>\nsecret reasoning\n</think>\n\n", "") == hf_text


def test_llama_date_string_is_pinned(llama_tok):
    template = Llama3Template(date_string="01 Jan 2025")
    messages = CONVERSATIONS["system_user"]
    assert template.render_prompt(llama_tok, messages) == apply_chat_template_ids(
        llama_tok, messages, add_generation_prompt=True, date_string="01 Jan 2025"
    )
    text = template.render_text(messages)
    assert "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\n" in text
    # Without a date_string the official template uses today's date: only that line differs.
    hf_today = llama_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours_lines, hf_lines = text.split("\n"), hf_today.split("\n")
    differing = [a for a, b in zip(ours_lines, hf_lines) if a != b]
    assert len(ours_lines) == len(hf_lines) and all(a.startswith("Today Date:") for a in differing)


def test_llama_rejects_multiple_tool_calls(llama_tok):
    template = detect_template(llama_tok)
    with pytest.raises(ConfigError, match="one tool call"):
        template.render_message(llama_tok, "assistant", "", [WEATHER_CALL, WEATHER_CALL])


def test_unknown_template_falls_back_to_hf(smol_tok, caplog):
    original = smol_tok.chat_template
    smol_tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]:{% endif %}"
    )
    try:
        with caplog.at_level(logging.WARNING):
            template = detect_template(smol_tok)
        assert isinstance(template, HFChatTemplate)
        assert "not recognised" in caplog.text
        messages = CONVERSATIONS["multi_turn"]
        assert template.render_prompt(smol_tok, messages) == apply_chat_template_ids(
            smol_tok, messages, add_generation_prompt=True
        )
        msg = template.render_message(smol_tok, "user", "ping")
        assert smol_tok.decode(msg) == "[user]: ping\n"
        assert smol_tok.decode(template.generation_prompt(smol_tok)) == "[assistant]:"
        assert template.end_of_turn_ids(smol_tok) == (smol_tok.eos_token_id,)
    finally:
        smol_tok.chat_template = original


def test_no_template_no_known_tokens_raises(smol_tok):
    class Bare:
        chat_template = None

        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(ConfigError, match="no chat_template"):
        detect_template(Bare())
