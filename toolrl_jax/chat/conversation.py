"""Token-level conversation builder for multi-turn rollouts: ids + loss mask, never re-tokenised.

`Conversation` holds `ids: list[int]` and `loss_mask: list[int]` (1 = tokens the policy
generated, 0 = prompt, headers, tool observations, tokens we add to close a turn). It grows by
appending token ids only:

    conv = Conversation.from_messages(tok, template, [system, user])
    conv.add_generation_prompt()                 # <|im_start|>assistant\\n          (mask 0)
    conv.append_generated(sampled_ids)           # verbatim, e.g. ...</tool_call>   (mask 1)
    conv.append_tool_results([result], format="hermes")   # closes the turn, adds the results
    conv.add_generation_prompt()
    conv.append_generated(more_ids)              # ends with <|im_end|> -> turn closed

Generated ids are never decoded and re-encoded, so the training sequence is exactly what was
sampled (a re-tokenisation of the decoded text can differ: BPE is not injective on token
sequences). A turn that stopped on a stop string rather than an end-of-turn token is closed by
appending the template's end-of-turn id with mask 0 when the next message arrives. The
separator after an end-of-turn (ChatML's newline) is appended lazily, before the next message,
so a finished trajectory ends exactly at the generated end-of-turn id.

Prefix preservation: for ChatML and Llama 3, `from_messages(m[:k])` followed by
`append_message(m[k])` equals `from_messages(m[:k+1])`, and with a generated assistant turn the
ids equal the template's rendering of the same messages (tests/chat). The Jinja templates are
not always prefix-preserving (Qwen3 strips `<think>` from earlier assistant turns); the
builder keeps the tokens as generated, which is what the policy saw and what RL must score.

ReTool-style interleaving (code output inside the assistant turn): `append_text(text)` adds
observation ids (mask 0) without closing the open turn; generation continues after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from toolrl_jax.chat.hermes import render_tool_responses
from toolrl_jax.chat.templates import ChatTemplate, Message, encode_text
from toolrl_jax.chat.toolrl_prompt import render_toolrl_observation
from toolrl_jax.errors import ConfigError

__all__ = ["Conversation"]

ToolResultFormat = Literal["toolrl", "hermes", "native"]


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclasses.dataclass(eq=False)
class Conversation:
    """Token ids and loss mask of a conversation, built by appending ids.

    Attributes:
      tokenizer: the HF tokenizer used to render messages (not to re-encode generations).
      template: the chat format (`toolrl_jax.chat.templates`).
      ids: `[T]` token ids so far.
      loss_mask: `[T]` 1 where the policy generated the token, else 0.
      open_turn: "assistant" while a generated turn is open, else None.
    """

    tokenizer: Any
    template: ChatTemplate
    ids: list[int] = dataclasses.field(default_factory=list)
    loss_mask: list[int] = dataclasses.field(default_factory=list)
    open_turn: str | None = None
    pending_separator: bool = False

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_messages(
        cls,
        tokenizer,
        template: ChatTemplate,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        train_on_assistant: bool = False,
    ) -> Conversation:
        """Render `messages` (mask 0) as the start of a conversation.

        With `train_on_assistant=True` (SFT), the tokens of each assistant message after its
        header, through its end-of-turn id, get mask 1 (the separator after it stays 0; a token
        straddling header and content stays 0).
        """
        conv = cls(tokenizer=tokenizer, template=template)
        messages = list(messages)
        if not train_on_assistant:
            conv._extend(template.render_prompt(tokenizer, messages, add_generation_prompt), 0)
        else:
            system = None
            if messages and messages[0].get("role") == "system":
                system = messages[0].get("content") or ""
                messages = messages[1:]
            conv._extend(template.conversation_start(tokenizer, system), 0)
            k = 0
            while k < len(messages):
                role = messages[k].get("role")
                if role == "tool":
                    j = k
                    while j < len(messages) and messages[j].get("role") == "tool":
                        j += 1
                    results = [m.get("content") or "" for m in messages[k:j]]
                    conv._extend(template.render_tool_results(tokenizer, results), 0)
                    k = j
                    continue
                msg = messages[k]
                ids = template.render_message(
                    tokenizer, role, msg.get("content") or "", msg.get("tool_calls")
                )
                if role == "assistant":
                    conv._extend_assistant_message(ids)
                else:
                    conv._extend(ids, 0)
                k += 1
            if add_generation_prompt:
                conv.add_generation_prompt()
        if add_generation_prompt:
            conv.open_turn = "assistant"
        return conv

    def copy(self) -> Conversation:
        """An independent copy (for forking rollouts); the tokenizer is shared."""
        return dataclasses.replace(
            self, ids=list(self.ids), loss_mask=list(self.loss_mask)
        )

    # ---- appending ---------------------------------------------------------------------------
    def add_generation_prompt(self) -> Conversation:
        """Append the assistant header (mask 0) and open an assistant turn."""
        if self.open_turn is not None:
            raise ValueError("an assistant turn is already open; append_generated into it")
        self._flush_separator()
        self._extend(self.template.generation_prompt(self.tokenizer), 0)
        self.open_turn = "assistant"
        return self

    def append_generated(self, ids: Sequence[int], end_of_turn: bool | None = None) -> Conversation:
        """Append policy-generated ids verbatim (mask 1) to the open assistant turn.

        Args:
          ids: sampled token ids, exactly as generated (may end with an end-of-turn id).
          end_of_turn: whether these ids finish the assistant turn. None: finished iff the last
            id is one of `template.end_of_turn_ids`. True: finish now, appending the primary
            end-of-turn id (mask 0) if the model did not generate one. False: keep the turn open
            (more generation or `append_text` follows).
        """
        if self.open_turn != "assistant":
            raise ValueError("no open assistant turn; call add_generation_prompt() first")
        ids = [int(i) for i in ids]
        self._extend(ids, 1)
        eot = self.template.end_of_turn_ids(self.tokenizer)
        ended = bool(ids) and ids[-1] in eot
        if end_of_turn is None:
            end_of_turn = ended
        if end_of_turn:
            if not ended:
                self._extend([eot[0]], 0)
            self.open_turn = None
            self.pending_separator = True
        return self

    def append_text(self, text: str) -> Conversation:
        """Append `text` (e.g. `<interpreter>...</interpreter>`) inside the open turn, mask 0."""
        if self.open_turn is None:
            raise ValueError("no open turn to append text to; use append_message")
        self._extend(encode_text(self.tokenizer, text), 0)
        return self

    def close_turn(self) -> Conversation:
        """Close an open assistant turn with the primary end-of-turn id (mask 0)."""
        if self.open_turn is not None:
            eot = self.template.end_of_turn_ids(self.tokenizer)
            if not (self.ids and self.ids[-1] in eot):
                self._extend([eot[0]], 0)
            self.open_turn = None
            self.pending_separator = True
        return self

    def append_message(
        self, role: str, content: str, tool_calls: Sequence[Mapping[str, Any]] | None = None
    ) -> Conversation:
        """Append a rendered message (mask 0), closing an open assistant turn first."""
        self.close_turn()
        self._flush_separator()
        self._extend(self.template.render_message(self.tokenizer, role, content, tool_calls), 0)
        return self

    def append_tool_results(
        self, results: Sequence[str], format: ToolResultFormat = "toolrl"
    ) -> Conversation:
        """Append tool results as the next turn (mask 0), closing an open assistant turn.

        Formats:
          - "toolrl": a user message `<obs> {results joined by newlines} </obs>` (ToolRL; pass
            one `toolrl_observation_payload(...)` string to match its data exactly).
          - "hermes": a user message of `<tool_response>\\n{r}\\n</tool_response>` blocks, which
            is exactly Qwen2.5/Qwen3's rendering of consecutive `tool` messages.
          - "native": the template's own rendering of `tool` messages (Qwen: hermes; SmolLM2:
            `<|im_start|>tool` messages; Llama 3: `ipython` messages with JSON-quoted content).
        """
        results = [str(r) for r in results]
        if format == "toolrl":
            return self.append_message("user", render_toolrl_observation(results))
        if format == "hermes":
            return self.append_message("user", render_tool_responses(results))
        if format == "native":
            self.close_turn()
            self._flush_separator()
            self._extend(self.template.render_tool_results(self.tokenizer, results), 0)
            return self
        raise ConfigError(f"tool result format {format!r} unknown; use toolrl, hermes or native")

    # ---- views -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_generated(self) -> int:
        """Number of policy tokens (sum of the loss mask)."""
        return int(sum(self.loss_mask))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """`(ids [T] int32, loss_mask [T] int32)` as numpy arrays."""
        return np.asarray(self.ids, np.int32), np.asarray(self.loss_mask, np.int32)

    def text(self) -> str:
        """Decoded text (for logs and rewards; never fed back as ids)."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=False)

    def generated_text(self) -> str:
        """Decoded text of the policy tokens only, concatenated (for logs)."""
        return self.tokenizer.decode(
            [t for t, m in zip(self.ids, self.loss_mask) if m], skip_special_tokens=False
        )

    # ---- internals ---------------------------------------------------------------------------
    def _extend(self, ids: Sequence[int], mask: int) -> None:
        self.ids.extend(int(i) for i in ids)
        self.loss_mask.extend([mask] * len(ids))

    def _flush_separator(self) -> None:
        if self.pending_separator:
            self._extend(self.template.turn_separator_ids(self.tokenizer), 0)
            self.pending_separator = False

    def _extend_assistant_message(self, ids: list[int]) -> None:
        """Append a rendered assistant message with mask 1 on content + end-of-turn."""
        header = self.template.assistant_header_ids(self.tokenizer)
        start = _common_prefix_len(header, ids)
        if start < len(header):  # a token straddles header and content: keep it at 0
            start += 1
        sep = self.template.turn_separator_ids(self.tokenizer)
        stop = len(ids) - len(sep) if sep and ids[len(ids) - len(sep):] == sep else len(ids)
        mask = [0] * len(ids)
        for t in range(start, stop):
            mask[t] = 1
        self.ids.extend(ids)
        self.loss_mask.extend(mask)

