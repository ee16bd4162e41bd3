"""Tool turns of a multi-turn rollout: parse the turn -> submit the calls -> render the observation.

An :class:`Environment` says how a trajectory talks to its tools: the executor that runs calls,
the function that reads calls out of a turn's text, the stop strings that end a tool turn and
the format the results come back in. A :class:`ToolTurnHandler` applies it to one turn at a
time for the :class:`~toolrl_jax.rollout.engine.RolloutEngine`:

1. ``submit(uid, turn, turn_ids)``: the turn's ids are decoded to text *only to parse the calls*
   (the ids stay the truth), the calls go to ``executor.submit`` and a :class:`ToolTurn` holds
   the future; a turn without a readable call gets an already-resolved empty future and its
   reason becomes an error observation;
2. ``observe(uid, tool_turn)`` (once the future is done): every result is cut to
   ``max_obs_tokens`` tokens and rendered as the next message in token ids (``chat.Conversation``:
   ToolRL ``<obs>``, hermes ``<tool_response>``, the template's tool role, or ReTool's inline
   ``<interpreter>`` block), or by the environment's own ``render_observation``; it returns an
   :class:`Observation` (ids with loss mask 0 and the call records of ``Trajectory.tool_calls``).

The handler keeps one ``Conversation`` per live trajectory (``start`` ... ``finish``), the state
the chat template needs to close the open turn and add the next generation prompt.

User turns. An environment with ``next_user_turn`` (BFCL multi-turn entries: several user
requests on one carried-over tool state) continues a trajectory whose assistant turn ended
without a tool call: ``follow_up(uid, turn, turn_ids)`` asks it for the task's next user
message(s) and, if there is one, returns a :class:`ToolTurn` with no calls whose observation is
that user message (ids with loss mask 0, then the generation prompt); the executor's
per-trajectory state is kept. Assistant turns are numbered over the whole trajectory; user
turn ``u`` spans the assistant turns after the ``u``-th user message up to the one that ends
without a tool call.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from toolrl_jax.chat import Conversation, stop_sequence_variants, toolrl_observation_payload
from toolrl_jax.errors import ConfigError
from toolrl_jax.toolcalls.parse import parse_completion
from toolrl_jax.toolcalls.types import ToolCall, ToolResult

__all__ = [
    "OBSERVATION_FORMATS",
    "PARSE_ERROR",
    "CallExtractor",
    "Environment",
    "Observation",
    "ToolTurn",
    "ToolTurnHandler",
    "code_extractor",
    "token_variants",
    "tool_call_extractor",
]

OBSERVATION_FORMATS = ("toolrl", "hermes", "native", "interpreter")
PARSE_ERROR = "parse_error"

#: ``f(turn_text) -> (calls, reason)``; ``reason`` is '' on success, else why no call was read.
CallExtractor = Callable[[str], "tuple[list[ToolCall], str]"]
#: ``f(turn_ids, [(tool name, result text), ...]) -> observation ids``.
ObservationRenderer = Callable[[list[int], list[tuple[str, str]]], list[int]]
#: ``f(task, user_turn, state) -> messages of user turn user_turn (>= 1) or None`` (no more).
UserTurnSource = Callable[[Any, int, Any], "Sequence[dict] | None"]
#: ``f(turn_ids, messages) -> ids`` (closing tokens, the user message, the generation prompt).
UserTurnRenderer = Callable[[list[int], Sequence[dict]], list[int]]


# ----------------------------------------------------------------------------- call extractors
def tool_call_extractor(syntax: str = "auto") -> CallExtractor:
    """Calls in the ``<tool_call>`` blocks of a turn's text, via ``toolcalls.parse``.

    Returns ``f(text) -> (calls, reason)``; ``reason`` is '' on success, else why no call could
    be read (the model sees it as an error observation).
    """

    def extract(text: str) -> tuple[list[ToolCall], str]:
        parsed = parse_completion(text, syntax)
        if not parsed.ok:
            return [], parsed.reason or "malformed tool call"
        if not parsed.tool_calls:
            return [], "no tool call found"
        return [ToolCall(c.name, dict(c.arguments)) for c in parsed.tool_calls], ""

    return extract


def code_extractor(
    tool_name: str = "python", open_tag: str = "<code>", close_tag: str = "</code>"
) -> CallExtractor:
    """ReTool: the last ``<code>...</code>`` block (``` fences stripped) -> one call
    ``tool_name(code=...)``."""

    def extract(text: str) -> tuple[list[ToolCall], str]:
        end = text.rfind(close_tag)
        start = text.rfind(open_tag, 0, end if end >= 0 else len(text))
        if start < 0 or end < 0:
            return [], f"no {open_tag}...{close_tag} block found"
        code = text[start + len(open_tag) : end].strip()
        if code.startswith("```"):
            first_newline = code.find("\n")
            code = code[first_newline + 1 :] if first_newline >= 0 else ""
            if code.rstrip().endswith("```"):
                code = code.rstrip()[:-3]
        return [ToolCall(tool_name, {"code": code.strip("\n").rstrip()})], ""

    return extract


def token_variants(tokenizer: Any, strings: Sequence[str]) -> list[list[int]]:
    """Every tokenization variant of each string (``chat.stop_sequence_variants``), once each."""
    out: list[list[int]] = []
    for s in strings:
        out += [v for v in stop_sequence_variants(tokenizer, s) if v not in out]
    return out


# ----------------------------------------------------------------------------- environment
@dataclasses.dataclass(frozen=True, kw_only=True)
class Environment:
    """How trajectories talk to their tools.

    Attributes:
      executor: ``ToolExecutor``-like: ``start(uid, task)``, ``submit(uid, calls) ->
        Future[list[ToolResult]]``, ``finish(uid)``.
      extract_calls: ``f(turn_text) -> (calls, reason)`` (:func:`tool_call_extractor`,
        :func:`code_extractor`).
      observation_format: 'toolrl' (``<obs> ... </obs>`` user message, ToolRL), 'hermes'
        (``<tool_response>`` blocks in a user message, Qwen), 'native' (the template's tool
        role), 'interpreter' (ReTool: ``<interpreter>...</interpreter>`` inside the open turn).
      tool_stop_strings: stop strings that end a turn with a tool call (matched as token ids,
        every tokenization variant from ``chat.stop_sequence_variants``).
      stop_strings: stop strings that end the trajectory.
      render_observation: ``f(turn_ids, [(tool name, text), ...]) -> ids`` replacing the
        chat-template rendering (environments with their own format, tokenizer-free tests).
      decode_text: ``f(ids) -> str`` used to parse calls; default ``tokenizer.decode``.
      next_user_turn: ``f(task, u, state) -> messages | None``: user turn ``u`` (1, 2, ...) of
        the trajectory's task, fed when an assistant turn ends without a tool call (``state``:
        the executor's per-trajectory state, carried over); None = single user turn.
      render_user_turn: ``f(turn_ids, messages) -> ids`` replacing the chat-template rendering
        of a fed user turn (tokenizer-free tests).
    """

    executor: Any
    extract_calls: CallExtractor
    observation_format: str = "hermes"
    tool_stop_strings: tuple[str, ...] = ("</tool_call>",)
    stop_strings: tuple[str, ...] = ()
    render_observation: ObservationRenderer | None = None
    decode_text: Callable[[list[int]], str] | None = None
    next_user_turn: UserTurnSource | None = None
    render_user_turn: UserTurnRenderer | None = None

    def __post_init__(self):
        if self.observation_format not in OBSERVATION_FORMATS:
            raise ConfigError(
                f"env.observation_format={self.observation_format!r}: use one of "
                f"{', '.join(OBSERVATION_FORMATS)}"
            )
        for name in ("tool_stop_strings", "stop_strings"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))


# ----------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class ToolTurn:
    """A tool turn submitted to the executor.

    Attributes:
      turn: index of the generated turn (0-based).
      turn_ids: the turn's generated ids.
      calls: the calls read from the turn (empty when none could be read).
      parse_error: why no call could be read ('' when the calls parsed).
      future: the executor's results, one ``ToolResult`` per call.
      submitted_at: ``time.perf_counter()`` at submission.
      user_messages: a fed user turn (``ToolTurnHandler.follow_up``): the messages rendered
        after the turn instead of tool results (no calls).
    """

    turn: int
    turn_ids: tuple[int, ...]
    calls: tuple[ToolCall, ...]
    parse_error: str
    future: concurrent.futures.Future
    submitted_at: float
    user_messages: tuple[dict, ...] = ()

    def done(self) -> bool:
        return self.future.done()


@dataclasses.dataclass(frozen=True)
class Observation:
    """What follows a tool turn: ``ids`` (loss mask 0: closing tokens, the observation message,
    the next generation prompt) and ``tool_calls`` (records ``{turn, name, arguments, ok, text,
    error_kind, seconds}`` for ``Trajectory.tool_calls``)."""

    ids: tuple[int, ...]
    tool_calls: tuple[dict, ...]


# ----------------------------------------------------------------------------- handler
class ToolTurnHandler:
    """Parse -> submit -> render for the tool turns of live trajectories (module docstring).

    Args:
      environment: the :class:`Environment`.
      tokenizer: HF tokenizer (decodes turns, truncates results, renders with ``template``);
        may be None when the environment has ``render_observation`` and ``decode_text``.
      template: the chat template (``chat.detect_template``), needed for chat rendering.
      max_obs_tokens: most tokens of one result (longer ones are cut, ``truncation_marker``
        appended).
    """

    def __init__(
        self,
        environment: Environment,
        *,
        tokenizer: Any = None,
        template: Any = None,
        max_obs_tokens: int = 512,
        truncation_marker: str = " ...[truncated]",
    ):
        env = environment
        if tokenizer is None and (env.render_observation is None or env.decode_text is None):
            raise ConfigError(
                "multi-turn rollouts need the tokenizer (or the environment's "
                "render_observation and decode_text) to read calls and render tool results"
            )
        if env.render_observation is None and template is None:
            raise ConfigError("rendering tool results needs the tokenizer's chat template")
        if (env.next_user_turn is not None and env.render_observation is not None
                and env.render_user_turn is None):
            raise ConfigError("an environment with next_user_turn and its own "
                              "render_observation needs render_user_turn too")
        self.environment = env
        self.tokenizer = tokenizer
        self.template = template
        self.max_obs_tokens = int(max_obs_tokens)
        self.truncation_marker = truncation_marker
        self._conversations: dict[int, Conversation] = {}
        self._user_turns: dict[int, tuple[Any, int]] = {}  # uid -> (task, user turns fed)

    # ---- trajectory lifetime
    def start(
        self, uid: int, task: Any, prompt_ids: Sequence[int], conversation: Any = None
    ) -> None:
        """A trajectory starts: per-trajectory tool state and the conversation to render into
        (``conversation`` from the request's messages, else one opened on ``prompt_ids``)."""
        self.environment.executor.start(uid, task)
        self._user_turns[uid] = (task, 0)
        if self.environment.render_observation is not None:
            return
        if conversation is None:
            conversation = Conversation(
                tokenizer=self.tokenizer,
                template=self.template,
                ids=list(prompt_ids),
                loss_mask=[0] * len(prompt_ids),
                open_turn="assistant",
            )
        self._conversations[uid] = conversation

    def finish(self, uid: int) -> None:
        """The trajectory ended (or the run was interrupted): release its tool state."""
        self._conversations.pop(uid, None)
        self._user_turns.pop(uid, None)
        self.environment.executor.finish(uid)

    # ---- one tool turn
    def submit(self, uid: int, turn: int, turn_ids: Sequence[int]) -> ToolTurn:
        """Parse the turn's calls and submit them; the turn waits on the returned future."""
        calls, why = self.environment.extract_calls(self._text(list(turn_ids)))
        if calls:
            future = self.environment.executor.submit(uid, calls)
        else:
            future = concurrent.futures.Future()
            future.set_result([])
        return ToolTurn(
            turn=turn,
            turn_ids=tuple(int(t) for t in turn_ids),
            calls=tuple(calls),
            parse_error=why,
            future=future,
            submitted_at=time.perf_counter(),
        )

    def follow_up(self, uid: int, turn: int, turn_ids: Sequence[int]) -> ToolTurn | None:
        """After an assistant turn without a tool call: the task's next user turn as a
        :class:`ToolTurn` without calls (its observation is the user message), or None when the
        environment has no user turns or the task's are used up (the trajectory ends)."""
        source = self.environment.next_user_turn
        if source is None or uid not in self._user_turns:
            return None
        task, fed = self._user_turns[uid]
        state_of = getattr(self.environment.executor, "state", None)
        messages = source(task, fed + 1, state_of(uid) if callable(state_of) else None)
        if not messages:
            return None
        self._user_turns[uid] = (task, fed + 1)
        future = concurrent.futures.Future()
        future.set_result([])
        return ToolTurn(turn=turn, turn_ids=tuple(int(t) for t in turn_ids), calls=(),
                        parse_error="", future=future, submitted_at=time.perf_counter(),
                        user_messages=tuple(dict(m) for m in messages))

    def observe(self, uid: int, tool_turn: ToolTurn) -> Observation:
        """The observation of a finished tool turn (call ``tool_turn.done()`` first)."""
        if tool_turn.user_messages:
            return Observation(ids=tuple(self._render_user_turn(uid, tool_turn)), tool_calls=())
        records = self._records(tool_turn, self._results(tool_turn))
        pairs = [(r["name"] or "error", self._truncate(r["text"])) for r in records]
        return Observation(ids=tuple(self._render(uid, tool_turn, pairs)), tool_calls=records)

    # ---- helpers
    def _text(self, ids: list[int]) -> str:
        """Text for parsing only; the ids stay the truth."""
        if self.environment.decode_text is not None:
            return self.environment.decode_text(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @staticmethod
    def _results(tool_turn: ToolTurn) -> list[ToolResult]:
        try:
            return list(tool_turn.future.result())
        except Exception as e:  # noqa: BLE001 - an executor failure is an observation, not a crash
            text = f"Error: tool execution failed: {e}"
            return [
                ToolResult(str(c.name), ok=False, text=text, error_kind="exception")
                for c in tool_turn.calls
            ]

    @staticmethod
    def _records(tool_turn: ToolTurn, results: list[ToolResult]) -> tuple[dict, ...]:
        """Call records: the parse error first (if any), then one per call with its result."""
        records = []
        if tool_turn.parse_error:
            text = f"Error: could not parse the tool call: {tool_turn.parse_error}"
            records.append(
                dict(turn=tool_turn.turn, name=None, arguments=None, ok=False, text=text,
                     error_kind=PARSE_ERROR, seconds=0.0)
            )
        for call, res in zip(tool_turn.calls, results):
            records.append(
                dict(turn=tool_turn.turn, name=res.name, arguments=getattr(call, "arguments", None),
                     ok=res.ok, text=res.text, error_kind=res.error_kind,
                     seconds=float(res.seconds))
            )
        return tuple(records)

    def _truncate(self, text: str) -> str:
        if self.tokenizer is None:
            return text
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self.max_obs_tokens:
            return text
        return self.tokenizer.decode(ids[: self.max_obs_tokens]) + self.truncation_marker

    def _render_user_turn(self, uid: int, tool_turn: ToolTurn) -> list[int]:
        """Ids after a finished assistant turn: its closing tokens, the user message(s), the
        generation prompt (loss mask 0)."""
        env = self.environment
        if env.render_user_turn is not None:
            return [int(t) for t in env.render_user_turn(list(tool_turn.turn_ids),
                                                         list(tool_turn.user_messages))]
        conv = self._conversations[uid]
        start = len(conv.ids) + len(tool_turn.turn_ids)  # a closing id the model did not
        conv.append_generated(list(tool_turn.turn_ids), end_of_turn=True)  # write is ours
        for m in tool_turn.user_messages:
            conv.append_message(str(m.get("role", "user")), str(m.get("content", "")))
        conv.add_generation_prompt()
        return list(conv.ids[start:])

    def _render(self, uid: int, tool_turn: ToolTurn, pairs: list[tuple[str, str]]) -> list[int]:
        """Ids after the turn: closing tokens, the observation message, the generation prompt."""
        env = self.environment
        if env.render_observation is not None:
            return [int(t) for t in env.render_observation(list(tool_turn.turn_ids), pairs)]
        conv = self._conversations[uid]
        conv.append_generated(list(tool_turn.turn_ids), end_of_turn=False)
        start = len(conv.ids)
        texts = [t for _, t in pairs]
        if env.observation_format == "interpreter":
            conv.append_text("\n<interpreter>\n" + "\n".join(texts) + "\n</interpreter>\n")
        elif env.observation_format == "toolrl":
            conv.append_tool_results([toolrl_observation_payload(pairs)], format="toolrl")
            conv.add_generation_prompt()
        else:
            conv.append_tool_results(texts, format=env.observation_format)
            conv.add_generation_prompt()
        return list(conv.ids[start:])
