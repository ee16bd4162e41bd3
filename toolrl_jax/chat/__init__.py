"""Tokenizers and chat formats at the token level (token-in/token-out).

- `load_tokenizer(source)`: HF tokenizer from a model directory or a GGUF file, offline.
- `detect_template(tokenizer)` -> `ChatTemplate` (`ChatMLTemplate`, `Llama3Template`, or the
  `HFChatTemplate` fallback): prompts and messages as token ids, equal to
  `apply_chat_template` on the real Qwen3 / Llama 3.2 / SmolLM2 tokenizers.
- `Conversation`: ids + loss mask built by appending generated ids verbatim and rendered
  messages / tool results, for multi-turn rollouts.
- `toolrl_prompt`: ToolRL's system prompt and dialogue-history user message (build and parse).
- `hermes`: Qwen's `<tools>` / `<tool_call>` / `<tool_response>` format.
- `stop_sequences_to_ids`, `stop_sequence_variants`: stop strings as token ids for the sampler.
"""

from toolrl_jax.chat.conversation import Conversation
from toolrl_jax.chat.hermes import (
    format_tool_call,
    parse_tool_calls,
    render_tool_responses,
    render_tools_system,
)
from toolrl_jax.chat.templates import (
    LLAMA32_CHAT_TEMPLATE,
    QWEN3_NO_THINK_PREFIX,
    ChatMLTemplate,
    ChatTemplate,
    HFChatTemplate,
    Llama3Template,
    apply_chat_template_ids,
    detect_template,
    encode_text,
)
from toolrl_jax.chat.tokenizer import (
    find_test_tokenizer,
    load_tokenizer,
    stop_sequence_variants,
    stop_sequences_to_ids,
)
from toolrl_jax.chat.toolrl_prompt import (
    build_toolrl_system_prompt,
    build_toolrl_user_message,
    parse_toolrl_system_prompt,
    parse_toolrl_user_message,
    render_toolrl_observation,
    toolrl_observation_payload,
    toolrl_tool_from_function,
)

__all__ = [
    "LLAMA32_CHAT_TEMPLATE",
    "QWEN3_NO_THINK_PREFIX",
    "ChatMLTemplate",
    "ChatTemplate",
    "Conversation",
    "HFChatTemplate",
    "Llama3Template",
    "apply_chat_template_ids",
    "build_toolrl_system_prompt",
    "build_toolrl_user_message",
    "detect_template",
    "encode_text",
    "find_test_tokenizer",
    "format_tool_call",
    "load_tokenizer",
    "parse_tool_calls",
    "parse_toolrl_system_prompt",
    "parse_toolrl_user_message",
    "render_tool_responses",
    "render_toolrl_observation",
    "render_tools_system",
    "stop_sequence_variants",
    "stop_sequences_to_ids",
    "toolrl_observation_payload",
    "toolrl_tool_from_function",
]
