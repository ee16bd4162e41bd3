"""ReTool cold start (Feng et al., arXiv 2504.11536): code-augmented SFT traces.

:func:`cold_start_traces` turns generated math problems (``data.math.generate_math_tasks``) into
assistant turns of the form::

    <think>
    {plan}
    </think>
    <code>
    ```python
    {reference code}
    ```
    </code>
    <interpreter>
    {what the sandbox printed}
    </interpreter>
    The result of the computation is \\boxed{{answer}}.

The ``<interpreter>`` text is the real output of executing the problem's reference code in the
sandbox (``tools.code_interpreter.run_cell``), rendered exactly as the rollout engine renders
an ``interpreter`` observation (``"\\n<interpreter>\\n" + text + "\\n</interpreter>\\n"`` right
after ``</code>``), and the boxed answer is the last line the program printed. A problem whose
program fails or prints something other than its known answer gives no trace (counted in
``ColdStartTraces.skipped``).

:func:`cold_start_example` gives the SFT token ids and loss mask of one trace with the
token-level builder ``chat.Conversation``: prompt (mask 0), then the assistant turn as the
engine would produce it, generated pieces with mask 1 and each interpreter block (encoded on its
own, as the engine encodes observations) with mask 0, then the end-of-turn id with mask 1. Without
interpreter blocks this equals ``train.sft.sft_example`` (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from toolrl_jax.chat.conversation import Conversation
from toolrl_jax.chat.templates import encode_text
from toolrl_jax.data.task import ToolTask
from toolrl_jax.tools.code_interpreter import InterpreterLimits, run_cell

__all__ = [
    "INTERPRETER_CLOSE",
    "INTERPRETER_OPEN",
    "ColdStartTraces",
    "cold_start_example",
    "cold_start_examples",
    "cold_start_traces",
    "split_interpreter_blocks",
]

INTERPRETER_OPEN = "\n<interpreter>\n"  # the engine's 'interpreter' observation format
INTERPRETER_CLOSE = "\n</interpreter>\n"


@dataclasses.dataclass(frozen=True)
class ColdStartTraces(Sequence):
    """``(messages, assistant_text)`` pairs (a read-only sequence) plus the skipped task ids."""

    traces: tuple[tuple[list[dict[str, Any]], str], ...]
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.traces)

    def __getitem__(self, i):
        return self.traces[i]


def _trace_text(plan: str, code: str, interpreter: str, answer: str) -> str:
    return (f"<think>\n{plan}\n</think>\n<code>\n```python\n{code}\n```\n</code>"
            f"{INTERPRETER_OPEN}{interpreter}{INTERPRETER_CLOSE}"
            f"The result of the computation is \\boxed{{{answer}}}.")


def cold_start_traces(tasks: Sequence[ToolTask], *, timeout_s: float = 10.0, memory_mb: int = 512,
                      max_output_chars: int = 2048) -> ColdStartTraces:
    """Code-augmented traces of ``tasks`` (each needs ``meta["reference_code"]``; ``meta["plan"]``
    is the ``<think>`` text), executed in the sandbox with these limits (see module docstring)."""
    limits = InterpreterLimits(timeout_s=timeout_s, memory_mb=memory_mb,
                               max_output_chars=max_output_chars)
    traces, skipped = [], []
    for task in tasks:
        code = task.meta.get("reference_code")
        if not isinstance(code, str) or not code.strip():
            skipped.append(task.id)
            continue
        cell = run_cell(code, limits)
        lines = cell.text.strip().splitlines()
        printed = lines[-1].strip() if lines else ""
        if cell.status != "ok" or printed != str(task.ground_truth).strip():
            skipped.append(task.id)
            continue
        plan = str(task.meta.get("plan") or "I will compute the answer with a short program.")
        traces.append((list(task.messages), _trace_text(plan, code, cell.text, printed)))
    return ColdStartTraces(traces=tuple(traces), skipped=tuple(skipped))


def split_interpreter_blocks(text: str) -> list[tuple[str, bool]]:
    """``text`` as ``(piece, is_interpreter)`` pieces; interpreter pieces are whole
    ``INTERPRETER_OPEN ... INTERPRETER_CLOSE`` blocks. Linear time; an unclosed block is text."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    while True:
        start = text.find(INTERPRETER_OPEN, pos)
        end = text.find(INTERPRETER_CLOSE, start + len(INTERPRETER_OPEN)) if start >= 0 else -1
        if start < 0 or end < 0:
            break
        if start > pos:
            pieces.append((text[pos:start], False))
        pieces.append((text[start:end + len(INTERPRETER_CLOSE)], True))
        pos = end + len(INTERPRETER_CLOSE)
    if pos < len(text):
        pieces.append((text[pos:], False))
    return pieces


def cold_start_example(tokenizer, template, messages: Sequence[Mapping[str, Any]],
                       assistant_text: str) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of ``messages + [assistant: assistant_text]``: mask 1 on the
    assistant's own tokens and its end-of-turn id, 0 on the prompt and interpreter blocks."""
    conv = Conversation.from_messages(tokenizer, template, list(messages), add_generation_prompt=True)
    for piece, is_interpreter in split_interpreter_blocks(assistant_text):
        if is_interpreter:
            conv.append_text(piece)
        else:
            conv.append_generated(encode_text(tokenizer, piece), end_of_turn=False)
    conv.append_generated([template.end_of_turn_ids(tokenizer)[0]])
    return list(conv.ids), list(conv.loss_mask)


def cold_start_examples(tokenizer, template, traces: Sequence[tuple[Sequence[Mapping[str, Any]], str]]
                        ) -> list[tuple[list[int], list[int]]]:
    """:func:`cold_start_example` of every ``(messages, assistant_text)`` trace (for
    ``train.sft.pad_examples``)."""
    return [cold_start_example(tokenizer, template, m, a) for m, a in traces]
