"""Chat formats as token ids (token-in/token-out).

A `ChatTemplate` renders messages to *text pieces* that each begin at a special token (a role
header) and end right before the next one, then tokenizes every piece on its own with
`add_special_tokens=False`. Hugging Face tokenizers split text at added tokens before
pre-tokenization, so piecewise tokenization equals tokenizing the whole rendered string, and
equals `tokenizer.apply_chat_template(messages, tokenize=True)` wherever our text equals the
Jinja template's text (tested on the real Qwen3, Llama 3.2 and SmolLM2 tokenizers).

Families:
- `ChatMLTemplate` (Qwen2.5, Qwen3, SmolLM2): `<|im_start|>{role}\\n{content}<|im_end|>\\n`;
  optional default system message (SmolLM2, Qwen2.5 insert one when the conversation has none);
  tool messages either as Qwen's hermes block (`tool_format="hermes"`: consecutive `tool`
  messages become one user turn of `<tool_response>\\n...\\n</tool_response>` blocks) or as a
  plain `tool` role (`"role"`).
- `Llama3Template` (Llama 3.x Instruct): `<|begin_of_text|>` and an always-present system header
  `Cutting Knowledge Date: December 2023\\nToday Date: {date_string}\\n\\n{system}`, then
  `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content | trim}<|eot_id|>`. The official
  template takes the date from the wall clock (`strftime_now`) when no `date_string` is passed,
  which makes prompts change every day; we pin `date_string` (default: the template's own
  fallback "26 Jul 2024"). Pass the same `date_string=` to `apply_chat_template` to compare.
- `HFChatTemplate`: fallback for unknown Jinja templates; whole prompts come from
  `apply_chat_template`, single messages from the difference of two renderings (best effort).

Where we deliberately differ from the Jinja templates (what RL needs: the tokens as generated):
- Assistant content is rendered verbatim. Qwen3's template rewrites assistant turns: it drops
  `<think>...</think>` from turns before the last user query and, for turns after it, re-formats
  the reasoning as `<think>\\n{r}\\n</think>\\n\\n{content}` (adding an empty think block when there
  is none). Our rendering equals Qwen3's wherever that rewrite is the identity (no think block in
  earlier turns; a normalised think block in the final turns).
- Llama 3's template rejects more than one tool call per assistant message; we render only the
  single-call form too (`{"name": ..., "parameters": ...}`) and raise on more.

`detect_template(tokenizer)` checks each candidate family against the tokenizer's own Jinja
template on probe conversations and returns the first that agrees exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from toolrl_jax.chat.hermes import (
    format_tool_call,
    render_tool_responses,
    tool_call_name_and_arguments,
)
from toolrl_jax.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "LLAMA32_CHAT_TEMPLATE",
    "QWEN3_NO_THINK_PREFIX",
    "ChatMLTemplate",
    "ChatTemplate",
    "HFChatTemplate",
    "Llama3Template",
    "apply_chat_template_ids",
    "detect_template",
    "encode_text",
]

Message = Mapping[str, Any]

# Text Qwen3's template puts after `<|im_start|>assistant\n` when `enable_thinking=False`.
QWEN3_NO_THINK_PREFIX = "<think>\n\n</think>\n\n"

# The official Llama 3.2 Instruct chat template (Meta, as shipped in tokenizer_config.json of
# meta-llama/Llama-3.2-*-Instruct). `load_tokenizer` attaches it to Llama 3.x tokenizers that
# come without one; tests use it as the independent reference for `Llama3Template`.
LLAMA32_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- System message #}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{%- if tools is not none %}\n"
    "    {{- \"Environment: ipython\\n\" }}\n"
    "{%- endif %}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{%- if tools is not none and not tools_in_user_message %}\n"
    "    {{- \"You have access to the following functions. To call a function, please respond "
    "with JSON for a function call.\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of "
    "argument name and its value}.' }}\n"
    "    {{- \"Do not use variables.\\n\\n\" }}\n"
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\\n\\n\" }}\n"
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no "
    "first user message!\") }}\n"
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    "    {{- \"Given the following functions, please respond with a JSON for a function "
    "call \" }}\n"
    "    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of "
    "argument name and its value}.' }}\n"
    "    {{- \"Do not use variables.\\n\\n\" }}\n"
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\\n\\n\" }}\n"
    "    {%- endfor %}\n"
    "    {{- first_user_message + \"<|eot_id|>\"}}\n"
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in "
    "message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
    "message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    "            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n"
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "        {{- '\"parameters\": ' }}\n"
    "        {{- tool_call.arguments | tojson }}\n"
    "        {{- \"}\" }}\n"
    "        {{- \"<|eot_id|>\" }}\n"
    "    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n"
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    "        {{- \"<|eot_id|>\" }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` alone: no BOS/EOS added, special-token text becomes special ids."""
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))


def apply_chat_template_ids(tokenizer, messages: Sequence[Message], **kwargs) -> list[int]:
    """`tokenizer.apply_chat_template(..., tokenize=True)` as a plain list of ids.

    transformers 5 returns a BatchEncoding by default; 4.x a list. This normalises both.
    """
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, **kwargs)
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return [int(i) for i in out]


def _tojson(value: Any) -> str:
    """Jinja's `tojson` as transformers defines it: json.dumps(ensure_ascii=False)."""
    return json.dumps(value, ensure_ascii=False)


def _content(message: Message) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise ConfigError(
            f"message content must be a string, got {type(content).__name__} for role "
            f"{message.get('role')!r}"
        )
    return content


def _role(message: Message) -> str:
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise ConfigError(f"message has no role: {dict(message)!r}")
    return role


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatTemplate:
    """A chat format as text pieces and token ids. Subclasses define the text pieces.

    Token-level API (all return `list[int]`, never adding BOS/EOS implicitly):
    - `render_prompt(tokenizer, messages, add_generation_prompt=True)`: a whole prompt.
    - `render_message(tokenizer, role, content)`: one message with its header and end-of-turn.
    - `render_tool_results(tokenizer, results)`: the template's native tool-result turn(s).
    - `generation_prompt(tokenizer)`: the assistant header that starts a generated turn.
    - `end_of_turn_ids(tokenizer)`: ids that end an assistant turn (stop ids), primary first.
    - `turn_separator_ids(tokenizer)`: ids the template puts after an end-of-turn id.
    """

    name: str = "base"

    # ---- text level (subclasses) -------------------------------------------------------
    def conversation_start_text(self, system: str | None) -> str:
        """Text that opens a conversation: BOS (if any) and the system block (or default)."""
        raise NotImplementedError

    def message_text(self, role: str, content: str, tool_calls: Sequence[Any] | None = None) -> str:
        """Text of one complete message, including its end-of-turn and separator."""
        raise NotImplementedError

    def tool_results_text(self, results: Sequence[str]) -> str:
        """Text of the template's native rendering of consecutive `tool` messages."""
        raise NotImplementedError

    def generation_prompt_text(self) -> str:
        """Assistant header that starts a generated turn."""
        raise NotImplementedError

    def message_header_text(self, role: str) -> str:
        """Header that opens a message of `role` (before its content)."""
        raise NotImplementedError

    @property
    def end_of_turn_tokens(self) -> tuple[str, ...]:
        """Token strings that end an assistant turn; the first closes turns we close ourselves."""
        raise NotImplementedError

    @property
    def turn_separator(self) -> str:
        """Text the template puts after the end-of-turn token (ChatML: newline)."""
        return ""

    def render_text_pieces(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[str]:
        """The prompt as text pieces, each starting at a special token."""
        messages = list(messages)
        system = None
        if messages and _role(messages[0]) == "system":
            system = _content(messages[0])
            messages = messages[1:]
        pieces = [self.conversation_start_text(system)]
        i = 0
        while i < len(messages):
            role = _role(messages[i])
            if role == "tool":
                j = i
                while j < len(messages) and _role(messages[j]) == "tool":
                    j += 1
                pieces.append(self.tool_results_text([_content(m) for m in messages[i:j]]))
                i = j
                continue
            pieces.append(
                self.message_text(role, _content(messages[i]), messages[i].get("tool_calls"))
            )
            i += 1
        if add_generation_prompt:
            pieces.append(self.generation_prompt_text())
        return [p for p in pieces if p]

    def render_text(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt as one string (what the Jinja template would render)."""
        return "".join(self.render_text_pieces(messages, add_generation_prompt))

    # ---- token level ---------------------------------------------------------------------
    def render_prompt(
        self, tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a whole prompt; equals `apply_chat_template(..., tokenize=True)`."""
        ids: list[int] = []
        for piece in self.render_text_pieces(messages, add_generation_prompt):
            ids.extend(encode_text(tokenizer, piece))
        return ids

    def conversation_start(self, tokenizer, system: str | None = None) -> list[int]:
        """Ids that open a conversation (BOS, system block or default system)."""
        return encode_text(tokenizer, self.conversation_start_text(system))

    def render_message(
        self, tokenizer, role: str, content: str, tool_calls: Sequence[Any] | None = None
    ) -> list[int]:
        """Ids of one complete message (header, content, end-of-turn, separator)."""
        if role == "tool":
            return self.render_tool_results(tokenizer, [content])
        return encode_text(tokenizer, self.message_text(role, content, tool_calls))

    def render_tool_results(self, tokenizer, results: Sequence[str]) -> list[int]:
        """Ids of the native rendering of consecutive `tool` messages with these contents."""
        return encode_text(tokenizer, self.tool_results_text(list(results)))

    def generation_prompt(self, tokenizer) -> list[int]:
        """Ids of the assistant header that starts a generated turn."""
        return encode_text(tokenizer, self.generation_prompt_text())

    def assistant_header_ids(self, tokenizer) -> list[int]:
        """Ids of an assistant message header (the generation prompt without any prefix)."""
        return encode_text(tokenizer, self.message_header_text("assistant"))

    def end_of_turn_ids(self, tokenizer) -> tuple[int, ...]:
        """Ids that end an assistant turn, the primary one first (use all as stop ids)."""
        ids = []
        for tok in self.end_of_turn_tokens:
            tid = tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
                ids.append(tid)
        if not ids:
            raise ConfigError(
                f"tokenizer has none of the end-of-turn tokens {self.end_of_turn_tokens} of the "
                f"{self.name!r} chat template"
            )
        return tuple(ids)

    def turn_separator_ids(self, tokenizer) -> list[int]:
        """Ids that follow an end-of-turn id before the next message."""
        return encode_text(tokenizer, self.turn_separator)


# --------------------------------------------------------------------------------------------
# ChatML (Qwen2.5, Qwen3, SmolLM2)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatMLTemplate(ChatTemplate):
    """`<|im_start|>{role}\\n{content}<|im_end|>\\n` (Qwen2.5, Qwen3, SmolLM2).

    Attributes:
      default_system: system text inserted when the conversation has no system message
        (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
        Qwen2.5: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
        Qwen3: none).
      tool_format: "hermes" (Qwen: consecutive tool messages -> one user turn of
        `<tool_response>` blocks) or "role" (a plain `<|im_start|>tool` message each).
      generation_prefix: text after `<|im_start|>assistant\\n` in the generation prompt, e.g.
        `QWEN3_NO_THINK_PREFIX` for Qwen3 with `enable_thinking=False`.
    """

    name: str = "chatml"
    default_system: str | None = None
    tool_format: Literal["hermes", "role"] = "hermes"
    generation_prefix: str = ""

    def conversation_start_text(self, system: str | None) -> str:
        if system is None:
            system = self.default_system
        if system is None:
            return ""
        return self.message_text("system", system)

    def message_text(self, role: str, content: str, tool_calls: Sequence[Any] | None = None) -> str:
        if role == "tool":
            return self.tool_results_text([content])
        if tool_calls:
            parts = [content]
            for k, call in enumerate(tool_calls):
                if (k == 0 and content) or k > 0:
                    parts.append("\n")
                name, arguments = tool_call_name_and_arguments(call)
                parts.append(format_tool_call(name, arguments))
            content = "".join(parts)
        return f"{self.message_header_text(role)}{content}<|im_end|>\n"

    def tool_results_text(self, results: Sequence[str]) -> str:
        if self.tool_format == "hermes":
            return self.message_text("user", render_tool_responses(results))
        return "".join(f"<|im_start|>tool\n{r}<|im_end|>\n" for r in results)

    def generation_prompt_text(self) -> str:
        return self.message_header_text("assistant") + self.generation_prefix

    def message_header_text(self, role: str) -> str:
        return f"<|im_start|>{role}\n"

    @property
    def end_of_turn_tokens(self) -> tuple[str, ...]:
        return ("<|im_end|>", "<|endoftext|>")

    @property
    def turn_separator(self) -> str:
        return "\n"


# --------------------------------------------------------------------------------------------
# Llama 3.x
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3Template(ChatTemplate):
    """Llama 3.x Instruct (3.1 / 3.2 text models), as the official template renders it.

    Attributes:
      date_string: the "Today Date" in the system header (pinned; the official template uses
        the wall clock). Pass the same value as `date_string=` to `apply_chat_template`.
      add_bos: start conversations with `<|begin_of_text|>` (the template does).
    """

    name: str = "llama3"
    date_string: str = "26 Jul 2024"
    add_bos: bool = True

    def conversation_start_text(self, system: str | None) -> str:
        bos = "<|begin_of_text|>" if self.add_bos else ""
        return (
            f"{bos}<|start_header_id|>system<|end_header_id|>\n\n"
            f"Cutting Knowledge Date: December 2023\nToday Date: {self.date_string}\n\n"
            f"{(system or '').strip()}<|eot_id|>"
        )

    def message_text(self, role: str, content: str, tool_calls: Sequence[Any] | None = None) -> str:
        if role in ("tool", "ipython"):
            return self.tool_results_text([content])
        if tool_calls:
            if len(tool_calls) != 1:
                raise ConfigError(
                    f"Llama 3 chat format allows one tool call per assistant message, got "
                    f"{len(tool_calls)}; split them into separate messages"
                )
            name, arguments = tool_call_name_and_arguments(tool_calls[0])
            body = f'{{"name": "{name}", "parameters": {_tojson(arguments)}}}'
            return f"<|start_header_id|>assistant<|end_header_id|>\n\n{body}<|eot_id|>"
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>"

    def tool_results_text(self, results: Sequence[str]) -> str:
        # The official template JSON-encodes tool content (a string is "iterable" in Jinja), so
        # a result `abc` is shown to the model as `"abc"`. We match it.
        header = self.message_header_text("ipython")
        return "".join(f"{header}{_tojson(r)}<|eot_id|>" for r in results)

    def generation_prompt_text(self) -> str:
        return self.message_header_text("assistant")

    def message_header_text(self, role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    @property
    def end_of_turn_tokens(self) -> tuple[str, ...]:
        return ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


# --------------------------------------------------------------------------------------------
# Fallback: the tokenizer's own Jinja template
# --------------------------------------------------------------------------------------------

_PROBE_USER: dict[str, str] = {"role": "user", "content": "Hi."}


@dataclasses.dataclass(frozen=True, kw_only=True)
class HFChatTemplate(ChatTemplate):
    """Fallback for chat templates we do not know: defers to `tokenizer.apply_chat_template`.

    Whole prompts are exact. Single messages, the generation prompt and tool results are the
    difference between renderings of `[user "Hi.", message]` and `[user "Hi."]` (best effort:
    raises ConfigError when the template is not prefix-preserving there). The end of turn is
    the tokenizer's EOS; nothing is assumed to follow it.
    """

    name: str = "hf"
    template_kwargs: tuple[tuple[str, Any], ...] = ()

    def _render(self, tokenizer, messages, add_generation_prompt) -> list[int]:
        return apply_chat_template_ids(
            tokenizer, messages, add_generation_prompt=add_generation_prompt,
            **dict(self.template_kwargs),
        )

    def _difference(self, tokenizer, extra: list[Message], add_generation_prompt=False):
        base = self._render(tokenizer, [_PROBE_USER], False)
        full = self._render(tokenizer, [_PROBE_USER, *extra], add_generation_prompt)
        if full[: len(base)] != base:
            raise ConfigError(
                "the tokenizer's chat template is not prefix-preserving, so single messages "
                "cannot be rendered on their own; use a ChatML or Llama 3 model or template"
            )
        return full[len(base):]

    def render_prompt(self, tokenizer, messages, add_generation_prompt=True) -> list[int]:
        return self._render(tokenizer, messages, add_generation_prompt)

    def render_text(self, messages, add_generation_prompt=True) -> str:
        raise NotImplementedError("HFChatTemplate renders with a tokenizer: use render_prompt")

    def conversation_start(self, tokenizer, system: str | None = None) -> list[int]:
        if system is None:
            return []
        return self._render(tokenizer, [{"role": "system", "content": system}], False)

    def render_message(self, tokenizer, role, content, tool_calls=None) -> list[int]:
        message: dict[str, Any] = {"role": role, "content": content}
        if tool_calls:
            message["tool_calls"] = list(tool_calls)
        return self._difference(tokenizer, [message])

    def render_tool_results(self, tokenizer, results) -> list[int]:
        return self._difference(tokenizer, [{"role": "tool", "content": r} for r in results])

    def generation_prompt(self, tokenizer) -> list[int]:
        return self._difference(tokenizer, [], add_generation_prompt=True)

    def assistant_header_ids(self, tokenizer) -> list[int]:
        return self.generation_prompt(tokenizer)

    def end_of_turn_ids(self, tokenizer) -> tuple[int, ...]:
        if tokenizer.eos_token_id is None:
            raise ConfigError("tokenizer has no eos_token; set one to end assistant turns")
        return (int(tokenizer.eos_token_id),)

    def turn_separator_ids(self, tokenizer) -> list[int]:
        return []


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------

_PROBES: tuple[tuple[tuple[dict[str, str], ...], bool], ...] = (
    (({"role": "user", "content": "Hello there."},), True),
    (
        (
            {"role": "system", "content": "You are a probe."},
            {"role": "user", "content": "First question?"},
            {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": "Second question?"},
        ),
        True,
    ),
    (
        (
            {"role": "system", "content": "You are a probe."},
            {"role": "user", "content": "Look it up."},
            {"role": "assistant", "content": "Looking."},
            {"role": "tool", "content": "result one"},
            {"role": "tool", "content": "result two"},
        ),
        True,
    ),
)


def _hf_text(tokenizer, messages, add_generation_prompt, **kwargs) -> str | None:
    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except Exception:  # a template may reject roles or orderings: no evidence either way
        return None


def _agrees(template: ChatTemplate, tokenizer) -> bool:
    kwargs = {"date_string": template.date_string} if isinstance(template, Llama3Template) else {}
    checked = 0
    for messages, gen in _PROBES:
        reference = _hf_text(tokenizer, messages, gen, **kwargs)
        if reference is None:
            continue
        if template.render_text(messages, gen) != reference:
            return False
        checked += 1
    return checked > 0


def _chatml_default_system(tokenizer) -> str | None:
    text = _hf_text(tokenizer, [{"role": "user", "content": "Hello there."}], False)
    head = "<|im_start|>system\n"
    if text and text.startswith(head) and "<|im_end|>" in text:
        return text[len(head): text.index("<|im_end|>")]
    return None


def detect_template(tokenizer) -> ChatTemplate:
    """The chat format of `tokenizer`, checked against its own Jinja template.

    Candidates come from the special tokens (`<|im_start|>` -> ChatML, `<|start_header_id|>`
    -> Llama 3). With a Jinja template, a candidate is accepted only if it renders the same text
    on probe conversations (user only; system/user/assistant/user; assistant then two tool
    results). Without one, the candidate is taken from the special tokens alone. When nothing
    agrees, returns `HFChatTemplate` and logs a warning.

    Raises:
      ConfigError: the tokenizer has neither a chat template nor known chat special tokens.
    """
    vocab = tokenizer.get_vocab()
    jinja = getattr(tokenizer, "chat_template", None)
    candidates: list[ChatTemplate] = []
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        default_system = _chatml_default_system(tokenizer) if jinja else None
        candidates += [
            ChatMLTemplate(default_system=default_system, tool_format="role"),
            ChatMLTemplate(default_system=default_system, tool_format="hermes"),
        ]
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        candidates.append(Llama3Template())
    if not jinja:
        if candidates:
            return candidates[-1] if isinstance(candidates[-1], Llama3Template) else candidates[1]
        raise ConfigError(
            "tokenizer has no chat_template and no ChatML / Llama 3 special tokens; use an "
            "instruct model's tokenizer or set tokenizer.chat_template"
        )
    for candidate in candidates:
        if _agrees(candidate, tokenizer):
            return candidate
    logger.warning(
        "chat template not recognised (not ChatML or Llama 3); falling back to "
        "tokenizer.apply_chat_template for whole prompts and prompt differences for messages"
    )
    return HFChatTemplate()
