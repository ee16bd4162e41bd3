"""Multi-turn rollout engine: a host loop over a fixed set of sampler slots.

Each of the ``num_slots`` rows of the jitted :class:`~toolrl_jax.rollout.sampler.Sampler` holds
one trajectory. The loop (VerlTool-style asynchronous rollout, arXiv 2509.01055):

1. **admit** waiting requests into free slots (prefill of the prompt ids only for those rows);
   with ``refill=True`` a slot is refilled as soon as its trajectory finishes (continuous
   batching); with ``refill=False`` a new wave starts only when every slot is free
   (batch-synchronous, for comparison);
2. **decode** a chunk of ``chunk_steps`` tokens for every decoding slot (one jitted
   ``while_loop``; rows stop on EOS, a stop sequence or a length limit);
3. for each row that stopped on a **tool end tag** (e.g. ``</tool_call>``, ReTool's ``</code>``),
   decode the turn's ids to text *only to parse the calls* (``toolcalls.parse``), and submit them
   to the :class:`~toolrl_jax.tools.ToolExecutor`; the slot waits while the other slots keep
   decoding;
4. when a slot's tool results arrive, **render** them as the next message in token ids
   (``chat.Conversation``: ToolRL ``<obs>``, hermes ``<tool_response>``, the template's native
   tool role, or ReTool's inline ``<interpreter>`` block), append them to the trajectory with
   loss mask 0 and to the slot's KV cache (prefill of the new tokens only), and continue.

Token ids are the truth: the generated ids are appended to the trajectory verbatim and are
never decoded and re-encoded to build the next turn (the decoded text is used for parsing
only). Limits: ``max_turns`` generated turns, ``max_obs_tokens`` per tool result (truncated
with a marker), ``max_new_tokens`` per turn and ``max_total_len`` tokens per trajectory.

Single-turn mode (``max_turns=1``, no executor) is plain batched sampling with continuous
refill: the GRPO trainer's first use (``expand_requests`` makes ``num_samples`` requests per
prompt sharing a ``group_id``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from toolrl_jax.errors import ConfigError
from toolrl_jax.toolcalls.types import ToolCall
from toolrl_jax.rollout import stops as stops_lib
from toolrl_jax.rollout.sampler import Sampler, bucket_length
from toolrl_jax.rollout.sampling import SamplingConfig
from toolrl_jax.rollout.trajectory import Trajectory, TrajectoryRecord

OBSERVATION_FORMATS = ("toolrl", "hermes", "native", "interpreter")
PARSE_ERROR = "parse_error"


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    """Rollout settings: the engine's own, and how the trainer draws prompts (the YAML
    ``rollout:`` section).

    Attributes:
      strategy: the rollout strategy (``toolrl_jax.train.strategies``): ``groups`` samples
        ``samples_per_prompt`` trajectories of each of ``prompts_per_step`` prompts.
      prompts_per_step: prompts (groups) per training step.
      samples_per_prompt: trajectories per prompt (the GRPO group size).
      eval_max_new_tokens: ``max_new_tokens`` of evaluation (None: the same as training).
      num_slots: rows decoded together (the sampler batch ``B``); the trainer uses at most
        this many and no more than it has rows.
      max_new_tokens: most tokens one turn may generate.
      max_total_len: most tokens in a trajectory (prompt + turns + observations); 0 = derived
        by the trainer from the longest prompt and the turn limits.
      max_turns: most generated turns (1 = single-turn, tools never run).
      max_obs_tokens: most tokens of one tool result inside an observation (longer results are
        cut and end with ``truncation_marker``).
      chunk_steps: decode steps between host synchronisations (tool dispatch, refill).
      refill: continuous refill of finished slots (False: batch-synchronous waves).
      sampling: temperature / top-p / top-k.
      seed: PRNG seed; trajectory ``uid`` uses stream ``fold_in(key(seed), uid)``.
      observation_format: 'toolrl' (``<obs> ... </obs>`` user message, ToolRL), 'hermes'
        (``<tool_response>`` blocks in a user message, Qwen), 'native' (the template's tool
        role), 'interpreter' (ReTool: ``<interpreter>...</interpreter>`` inside the open turn).
      tool_stop_strings: stop strings that end a turn with a tool call (matched as token ids,
        every tokenization variant from ``chat.stop_sequence_variants``).
      stop_strings: stop strings that end the trajectory.
      tool_call_syntax: call syntax for ``toolcalls.parse`` ('auto' | 'toolrl' | 'hermes' | 'python').
      truncation_marker: appended to a cut tool result.
      obs_overhead_tokens: room for the template tokens around results (sizes the KV cache).
      pad_multiple: the output ``Trajectory`` is right-padded to a multiple of this.
      share_prompt_prefill: samples of one prompt admitted together share one prefill (the
        cache rows are copied); their tokens are the same as with separate prefills up to
        float rounding.
    """

    strategy: str = "groups"
    prompts_per_step: int = 8
    samples_per_prompt: int = 4
    eval_max_new_tokens: int | None = None
    num_slots: int = 64
    max_new_tokens: int = 512
    max_total_len: int = 0
    max_turns: int = 1
    max_obs_tokens: int = 512
    chunk_steps: int = 32
    refill: bool = True
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0
    observation_format: str = "hermes"
    tool_stop_strings: tuple[str, ...] = ("</tool_call>",)
    stop_strings: tuple[str, ...] = ()
    tool_call_syntax: str = "auto"
    truncation_marker: str = " ...[truncated]"
    obs_overhead_tokens: int = 64
    pad_multiple: int = 64
    share_prompt_prefill: bool = True

    def __post_init__(self):
        for name in (
            "prompts_per_step",
            "samples_per_prompt",
            "num_slots",
            "max_new_tokens",
            "max_turns",
            "max_obs_tokens",
            "chunk_steps",
            "pad_multiple",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"rollout.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_total_len != 0 and self.max_total_len < 2:
            raise ConfigError("rollout.max_total_len must be >= 2 (or 0: derived)")
        if self.eval_max_new_tokens is not None and self.eval_max_new_tokens < 1:
            raise ConfigError(
                f"rollout.eval_max_new_tokens must be >= 1 or null, got {self.eval_max_new_tokens}"
            )
        if self.observation_format not in OBSERVATION_FORMATS:
            raise ConfigError(
                f"rollout.observation_format={self.observation_format!r}: use one of "
                f"{', '.join(OBSERVATION_FORMATS)}"
            )
        for name in ("tool_stop_strings", "stop_strings"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))

    @property
    def cache_len(self) -> int:
        """KV cache length: ``max_total_len`` plus room for the last observation's bucket."""
        if self.max_total_len == 0:
            raise ConfigError("rollout.max_total_len is 0 (derived by the trainer): set it when "
                              "building a RolloutEngine directly")
        slack = 0
        if self.max_turns > 1:
            slack = bucket_length(self.max_obs_tokens + self.obs_overhead_tokens + 1)
        return max(self.max_total_len + slack, bucket_length(self.max_total_len))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutRequest:
    """One trajectory to roll out: a prompt as ids or as chat messages.

    Attributes:
      prompt_ids: the prompt's token ids (ending with the generation prompt), or None.
      messages: chat messages rendered with the engine's template (add_generation_prompt).
      group_id: GRPO group (samples of one prompt share it).
      task: passed to ``ToolExecutor.start`` (per-trajectory environment state).
    """

    prompt_ids: Sequence[int] | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    group_id: int = 0
    task: Any = None


def expand_requests(
    prompts: Sequence[Sequence[int] | RolloutRequest], num_samples: int, *, first_group: int = 0
) -> list[RolloutRequest]:
    """``num_samples`` requests per prompt, prompt ``j`` in group ``first_group + j``
    (prompts given as id lists or as requests whose group id is replaced)."""
    out = []
    for j, p in enumerate(prompts):
        base = p if isinstance(p, RolloutRequest) else RolloutRequest(prompt_ids=list(p))
        for _ in range(num_samples):
            out.append(dataclasses.replace(base, group_id=first_group + j))
    return out


# ----------------------------------------------------------------------------- tool calls
CallExtractor = Callable[[str], "tuple[list[ToolCall], str]"]


def tool_call_extractor(syntax: str = "auto") -> CallExtractor:
    """Calls in the ``<tool_call>`` blocks of a turn's text, via ``toolcalls.parse``.

    Returns ``f(text) -> (calls, reason)``; ``reason`` is '' on success, else why no call could
    be read (the model sees it as an error observation).
    """
    from toolrl_jax.toolcalls.parse import parse_completion

    def extract(text: str) -> tuple[list[Any], str]:
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

    def extract(text: str) -> tuple[list[Any], str]:
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


# ----------------------------------------------------------------------------- engine
@dataclasses.dataclass
class _Slot:
    """Host view of one occupied slot."""

    record: TrajectoryRecord
    conversation: Any  # chat.Conversation (multi-turn) or None
    cached: int  # tokens of record.ids in the KV cache (the pending token is not)
    decoding: bool = False
    future: concurrent.futures.Future | None = None
    calls: list[Any] = dataclasses.field(default_factory=list)
    parse_error: str = ""
    submitted_at: float = 0.0


class RolloutEngine:
    """Rolls out requests into a :class:`Trajectory` (see module docstring).

    Args:
      model: the policy (``Decoder``).
      config: :class:`RolloutConfig`.
      tokenizer: HF tokenizer (needed for tools, chat messages and stop strings).
      template: chat template (``chat.detect_template(tokenizer)`` by default).
      executor: ``ToolExecutor``; with ``config.max_turns > 1`` tool turns run on it.
      extract_calls: ``f(turn_text) -> (calls, reason)``; default
        ``tool_call_extractor(config.tool_call_syntax)``.
      eos_ids: ids that end a trajectory; default the template's end-of-turn ids and the
        tokenizer's EOS, else ``model.config.eos_token_ids``.
      stop_sequences / tool_stop_sequences: extra stop id sequences (ending the trajectory /
        triggering tools), added to those from the config's strings.
      render_observation: ``f(turn_ids, results) -> ids`` to append after a tool turn, where
        ``results`` are ``(tool name, text)`` pairs; replaces the chat-template rendering (for
        environments with their own format, or tokenizer-free benchmarks).
      decode_text: ``f(ids) -> str`` used to parse calls; default ``tokenizer.decode``.
      init_cache: passed to the sampler (tests with fake models).
      jit_wrapper: passed to the sampler.
    """

    def __init__(
        self,
        model: Any,
        config: RolloutConfig,
        *,
        tokenizer: Any = None,
        template: Any = None,
        executor: Any = None,
        extract_calls: CallExtractor | None = None,
        eos_ids: Sequence[int] | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
        tool_stop_sequences: Sequence[Sequence[int]] = (),
        render_observation: Callable[[list[int], list[tuple[str, str]]], list[int]] | None = None,
        decode_text: Callable[[list[int]], str] | None = None,
        init_cache: Callable | None = None,
        jit_wrapper: Callable | None = None,
    ):
        self.config = config
        self.render_observation = render_observation
        self.decode_text = decode_text
        self.tokenizer = tokenizer
        self.executor = executor
        self.template = template
        if tokenizer is not None and template is None:
            from toolrl_jax.chat import detect_template

            try:
                self.template = detect_template(tokenizer)
            except ConfigError:
                if config.max_turns > 1 and render_observation is None:
                    raise  # rendering tool results needs the chat format
                self.template = None  # single-turn on prompt ids: no chat format needed
        self.multi_turn = config.max_turns > 1 and executor is not None
        if config.max_turns > 1 and executor is None:
            raise ConfigError("rollout.max_turns > 1 needs a ToolExecutor (executor=...)")
        if (
            self.multi_turn
            and tokenizer is None
            and (render_observation is None or decode_text is None)
        ):
            raise ConfigError(
                "multi-turn rollouts need the tokenizer (or render_observation and "
                "decode_text) to read calls and render tool results"
            )
        self.extract_calls = extract_calls or tool_call_extractor(config.tool_call_syntax)

        if eos_ids is None:
            eos_ids = self._default_eos_ids(model)
        self.eos_ids = tuple(int(t) for t in eos_ids)
        tool_seqs = [list(s) for s in tool_stop_sequences]
        end_seqs = [list(s) for s in stop_sequences]
        if tokenizer is not None:
            from toolrl_jax.chat import stop_sequence_variants

            if self.multi_turn:
                for s in config.tool_stop_strings:
                    tool_seqs += [
                        v for v in stop_sequence_variants(tokenizer, s) if v not in tool_seqs
                    ]
            for s in config.stop_strings:
                end_seqs += [v for v in stop_sequence_variants(tokenizer, s) if v not in end_seqs]
        if not self.multi_turn:
            end_seqs, tool_seqs = end_seqs + tool_seqs, []
        self.num_tool_stops = len(tool_seqs)  # table rows [0, num_tool_stops) trigger tools
        self.sampler = Sampler(
            model,
            batch_size=config.num_slots,
            cache_len=config.cache_len,
            turn_len=config.max_new_tokens,
            sampling=config.sampling,
            eos_ids=self.eos_ids,
            stop_sequences=tool_seqs + end_seqs,
            init_cache=init_cache,
            jit_wrapper=jit_wrapper,
        )

    def _default_eos_ids(self, model: Any) -> list[int]:
        ids: list[int] = []
        if self.tokenizer is not None:
            if self.template is not None:
                ids += list(self.template.end_of_turn_ids(self.tokenizer))
            eos = getattr(self.tokenizer, "eos_token_id", None)
            if isinstance(eos, int) and eos not in ids:
                ids.append(eos)
        if not ids:
            ids = list(getattr(getattr(model, "config", None), "eos_token_ids", ()) or ())
        return ids

    def set_params(self, params: Any) -> None:
        """New policy weights (``nnx.state`` of the model) for the next rollouts."""
        self.sampler.set_params(params)

    # ------------------------------------------------------------------ requests
    def _new_slot(self, uid: int, request: RolloutRequest) -> _Slot:
        conv = None
        if request.messages is not None:
            if self.tokenizer is None or self.template is None:
                raise ConfigError(
                    "RolloutRequest.messages needs the engine's tokenizer with a chat template; "
                    "pass prompt_ids instead"
                )
            from toolrl_jax.chat import Conversation

            conv = Conversation.from_messages(
                self.tokenizer, self.template, list(request.messages), add_generation_prompt=True
            )
            prompt = conv.ids
        elif request.prompt_ids is not None:
            prompt = [int(t) for t in request.prompt_ids]
            if self.multi_turn and self.render_observation is None:
                from toolrl_jax.chat import Conversation

                conv = Conversation(
                    tokenizer=self.tokenizer,
                    template=self.template,
                    ids=list(prompt),
                    loss_mask=[0] * len(prompt),
                    open_turn="assistant",
                )
        else:
            raise ConfigError(f"request {uid}: give prompt_ids or messages")
        if not prompt:
            raise ConfigError(f"request {uid}: empty prompt")
        if len(prompt) + 1 > self.config.max_total_len:
            raise ConfigError(
                f"request {uid}: prompt of {len(prompt)} tokens leaves no room under "
                f"rollout.max_total_len={self.config.max_total_len}; raise it or shorten the prompt"
            )
        record = TrajectoryRecord.from_prompt(uid, request.group_id, prompt)
        if self.multi_turn:
            self.executor.start(uid, request.task)
        return _Slot(record=record, conversation=conv, cached=0)

    # ------------------------------------------------------------------ observations
    def _truncate_result(self, text: str) -> str:
        if self.tokenizer is None:
            return text
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self.config.max_obs_tokens:
            return text
        return (
            self.tokenizer.decode(ids[: self.config.max_obs_tokens]) + self.config.truncation_marker
        )

    def _observation_ids(
        self, slot: _Slot, turn_ids: list[int], results: list[tuple[str, str]]
    ) -> list[int]:
        """Render ``results`` ((name, text) pairs) after the turn; returns the ids to append
        (closing tokens, the observation message, the next generation prompt)."""
        if self.render_observation is not None:
            return [
                int(t)
                for t in self.render_observation(
                    list(turn_ids), [(n, self._truncate_result(t)) for n, t in results]
                )
            ]
        conv = slot.conversation
        fmt = self.config.observation_format
        conv.append_generated(turn_ids, end_of_turn=False)
        start = len(conv.ids)
        texts = [self._truncate_result(t) for _, t in results]
        if fmt == "interpreter":
            conv.append_text("\n<interpreter>\n" + "\n".join(texts) + "\n</interpreter>\n")
        elif fmt == "toolrl":
            from toolrl_jax.chat import toolrl_observation_payload

            payload = toolrl_observation_payload([(n, t) for (n, _), t in zip(results, texts)])
            conv.append_tool_results([payload], format="toolrl")
            conv.add_generation_prompt()
        else:
            conv.append_tool_results(texts, format=fmt)
            conv.add_generation_prompt()
        return list(conv.ids[start:])

    # ------------------------------------------------------------------ main loop
    def run(
        self,
        requests: Sequence[RolloutRequest | Sequence[int]],
        *,
        refill: bool | None = None,
        seed: int | None = None,
    ) -> Trajectory:
        """Roll out every request; rows of the result are in request order (uid = index).

        ``Trajectory.stats`` holds: ``generated_tokens``, ``wall_s``, ``tokens_per_s``;
        ``slot_utilisation`` = active slot-steps / (num_slots x decode steps) (decode compute
        spent on live rows); ``slot_occupancy`` = time-average fraction of slots decoding
        (0 while every slot waits for tools); ``decode_time_fraction``; counts of decode /
        extend calls, decode steps, prefilled tokens, tool turns; seconds in decode, extend and
        waiting.
        ``refill`` and ``seed`` override the config for this call (compiled programs are shared;
        e.g. a trainer passes a new seed every step).
        """
        cfg = self.config
        refill = cfg.refill if refill is None else bool(refill)
        seed = cfg.seed if seed is None else int(seed)
        requests = [
            r if isinstance(r, RolloutRequest) else RolloutRequest(prompt_ids=list(r))
            for r in requests
        ]
        for uid, r in enumerate(requests):  # fail before any work, not halfway through
            if r.prompt_ids is not None and len(r.prompt_ids) + 1 > cfg.max_total_len:
                raise ConfigError(
                    f"request {uid}: prompt of {len(r.prompt_ids)} tokens leaves no room under "
                    f"rollout.max_total_len={cfg.max_total_len}; raise it or shorten the prompt"
                )
        b = cfg.num_slots
        queue = deque(enumerate(requests))
        slots: list[_Slot | None] = [None] * b
        done: dict[int, TrajectoryRecord] = {}
        stats = dict(
            decode_calls=0,
            decode_steps=0,
            active_row_steps=0,
            extend_calls=0,
            prefill_tokens=0,
            decode_s=0.0,
            extend_s=0.0,
            wait_s=0.0,
            busy_slot_s=0.0,
        )
        state = self.sampler.init_state(seed)
        t0 = time.perf_counter()

        def finish(i: int, reason: str) -> None:
            slot = slots[i]
            slot.record.stop_reason = reason
            done[slot.record.uid] = slot.record
            if self.multi_turn:
                self.executor.finish(slot.record.uid)
            slots[i] = None

        try:
            while queue or any(s is not None for s in slots):
                pending_extends: list[
                    tuple[int, list[int], bool, int]
                ] = []  # slot, chunk, reset, uid
                # (1) tool results that arrived -> observation chunks
                for i, slot in enumerate(slots):
                    if slot is not None and slot.future is not None and slot.future.done():
                        chunk = self._resume_after_tools(slot)
                        if chunk is None:
                            finish(i, "length")
                        else:
                            pending_extends.append((i, chunk, False, -1))
                # (2) admission of waiting requests into free slots
                if queue and (refill or all(s is None for s in slots)):
                    for i in range(b):
                        if slots[i] is None and queue:
                            uid, request = queue.popleft()
                            slots[i] = self._new_slot(uid, request)
                            pending_extends.append((i, list(slots[i].record.ids), True, uid))
                # (3) prefill the new tokens, grouped by length bucket
                if pending_extends:
                    t = time.perf_counter()
                    state = self._extend(state, slots, pending_extends, stats)
                    stats["extend_calls"] += 1
                    stats["extend_s"] += time.perf_counter() - t
                # (4) decode a chunk for every decoding slot
                if any(s is not None and s.decoding for s in slots):
                    t = time.perf_counter()
                    state, steps, busy = self.sampler.decode(state, cfg.chunk_steps)
                    active, reason, which, num = jax.device_get(
                        (state.active, state.stop_reason, state.stop_which, state.num_tokens)
                    )
                    elapsed = time.perf_counter() - t
                    stats["decode_calls"] += 1
                    stats["decode_steps"] += int(steps)
                    stats["active_row_steps"] += int(busy)
                    stats["decode_s"] += elapsed
                    if int(steps):
                        stats["busy_slot_s"] += elapsed * int(busy) / int(steps)
                    stopped = [
                        i
                        for i, s in enumerate(slots)
                        if s is not None and s.decoding and not active[i]
                    ]
                    if stopped:
                        tokens, logprobs = jax.device_get((state.tokens, state.logprobs))
                        for i in stopped:
                            n = int(num[i])
                            self._on_turn_end(
                                i,
                                slots,
                                finish,
                                tokens[i, :n].tolist(),
                                logprobs[i, :n].tolist(),
                                int(reason[i]),
                                int(which[i]),
                            )
                elif not pending_extends:
                    # (5) nothing decodes: wait for the first tool result
                    futures = [s.future for s in slots if s is not None and s.future is not None]
                    if futures:
                        t = time.perf_counter()
                        concurrent.futures.wait(
                            futures, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED
                        )
                        stats["wait_s"] += time.perf_counter() - t

        finally:  # an error or interrupt mid-run must not leak per-trajectory tool state
            if self.multi_turn:
                for slot in slots:
                    if slot is not None:
                        self.executor.finish(slot.record.uid)
        wall = time.perf_counter() - t0
        records = [done[uid] for uid in sorted(done)]
        generated = int(sum(sum(r.loss_mask) for r in records))
        stats.update(
            tool_turns=sum(len({c["turn"] for c in r.tool_calls}) for r in records),
            wall_s=wall,
            generated_tokens=generated,
            tokens_per_s=generated / wall if wall > 0 else 0.0,
            slot_utilisation=(
                stats["active_row_steps"] / (b * stats["decode_steps"])
                if stats["decode_steps"]
                else 0.0
            ),
            slot_occupancy=stats["busy_slot_s"] / (b * wall) if wall > 0 else 0.0,
            decode_time_fraction=stats["decode_s"] / wall if wall > 0 else 0.0,
        )
        pad_id = 0
        if self.tokenizer is not None and isinstance(
            getattr(self.tokenizer, "pad_token_id", None), int
        ):
            pad_id = self.tokenizer.pad_token_id
        return Trajectory.from_records(
            records, pad_id=pad_id, pad_multiple=cfg.pad_multiple, stats=stats
        )

    def _extend(
        self,
        state,
        slots: list[_Slot | None],
        pending: list[tuple[int, list[int], bool, int]],
        stats: dict[str, Any],
    ):
        """Prefill the pending chunks ``(slot, ids, reset, uid)`` (uid -1: continue the stream).

        With ``share_prompt_prefill``, fresh prompts admitted together with identical ids (the
        samples of one GRPO group) are prefilled once: the group's first slot gets the prompt
        minus its last token, its cache is copied to the other slots, and every slot is then
        extended by the last token alone, which samples its first token from its own stream.
        """
        cfg = self.config
        first_pass: list[tuple[int, list[int], bool, int]] = []
        last_tokens: list[tuple[int, list[int], bool, int]] = []
        copies: list[tuple[int, int]] = []
        if cfg.share_prompt_prefill:
            groups: dict[tuple[int, ...], list[tuple[int, list[int], bool, int]]] = {}
            for item in pending:
                if item[2] and len(item[1]) >= 2:
                    groups.setdefault(tuple(item[1]), []).append(item)
            shared = {key for key, items in groups.items() if len(items) > 1}
            for item in pending:
                if not (item[2] and tuple(item[1]) in shared):
                    first_pass.append(item)
            for key in shared:
                members = groups[key]
                src = members[0][0]
                first_pass.append((src, list(key[:-1]), True, -1))
                copies += [(src, m[0]) for m in members[1:]]
                last_tokens += [(m[0], [key[-1]], False, m[3]) for m in members]
        else:
            first_pass = list(pending)
        state = self._extend_by_bucket(state, first_pass)
        if copies:
            state = self.sampler.copy_rows(state, [s for s, _ in copies], [d for _, d in copies])
        state = self._extend_by_bucket(state, last_tokens)
        stats["prefill_tokens"] += sum(len(c) for _, c, _, _ in first_pass + last_tokens)
        for i, chunk, _, _ in pending:
            slot = slots[i]
            slot.cached += len(chunk)
            slot.decoding = True
            slot.future = None
        return state

    def _extend_by_bucket(self, state, items: list[tuple[int, list[int], bool, int]]):
        """One ``Sampler.extend`` per length bucket."""
        cfg = self.config
        groups: dict[int, list[tuple[int, list[int], bool, int]]] = {}
        for item in items:
            groups.setdefault(
                bucket_length(len(item[1]), minimum=self.sampler.min_bucket), []
            ).append(item)
        for _, group in sorted(groups.items()):
            state = self.sampler.extend(
                state,
                [i for i, *_ in group],
                [chunk for _, chunk, _, _ in group],
                reset=[reset for _, _, reset, _ in group],
                uids=[uid for *_, uid in group],
                max_tokens=cfg.max_new_tokens,
                max_total=cfg.max_total_len,
            )
        return state
        return state

    def _on_turn_end(self, i, slots, finish, turn_ids, turn_logprobs, reason, which) -> None:
        slot = slots[i]
        slot.decoding = False
        slot.record.append_generated(turn_ids, turn_logprobs)
        # every generated token but the last (the pending one) is in the cache now
        slot.cached += len(turn_ids) - 1
        if reason == stops_lib.EOS:
            return finish(i, "eos")
        if reason == stops_lib.LENGTH:
            return finish(i, "length")
        if not (reason == stops_lib.STOP_SEQUENCE and 0 <= which < self.num_tool_stops):
            return finish(i, "stop_sequence")
        if len(slot.record.turn_starts) >= self.config.max_turns:
            return finish(i, "max_turns")
        # the text is for parsing only; the ids stay the truth
        if self.decode_text is not None:
            text = self.decode_text(turn_ids)
        else:
            text = self.tokenizer.decode(turn_ids, skip_special_tokens=False)
        calls, why = self.extract_calls(text)
        slot.calls, slot.parse_error = calls, why
        slot.submitted_at = time.perf_counter()
        if calls:
            slot.future = self.executor.submit(slot.record.uid, calls)
        else:
            slot.future = concurrent.futures.Future()
            slot.future.set_result([])

    def _resume_after_tools(self, slot: _Slot) -> list[int] | None:
        """Observation ids to append (pending token first), or None when they do not fit."""
        cfg = self.config
        turn = len(slot.record.turn_starts) - 1
        try:
            results = slot.future.result()
        except Exception as e:  # noqa: BLE001 - an executor failure is an observation, not a crash
            results = [
                _FailedResult(str(getattr(c, "name", "?")), f"Error: tool execution failed: {e}")
                for c in slot.calls
            ]
        slot.future = None
        pairs: list[tuple[str, str]] = []
        if slot.parse_error:
            text = f"Error: could not parse the tool call: {slot.parse_error}"
            pairs.append(("error", text))
            slot.record.tool_calls.append(
                dict(
                    turn=turn,
                    name=None,
                    arguments=None,
                    ok=False,
                    text=text,
                    error_kind=PARSE_ERROR,
                    seconds=0.0,
                )
            )
        for call, res in zip(slot.calls, results):
            pairs.append((res.name, res.text))
            slot.record.tool_calls.append(
                dict(
                    turn=turn,
                    name=res.name,
                    arguments=getattr(call, "arguments", None),
                    ok=res.ok,
                    text=res.text,
                    error_kind=res.error_kind,
                    seconds=float(res.seconds),
                )
            )
        turn_ids = slot.record.ids[slot.record.turn_starts[-1] : slot.record.turn_ends[-1]]
        obs = self._observation_ids(slot, turn_ids, pairs)
        chunk = [slot.record.ids[-1]] + obs  # the pending token is not in the cache yet
        new_len = len(slot.record.ids) + len(obs)
        fits_cache = (
            slot.cached + bucket_length(len(chunk), minimum=self.sampler.min_bucket)
            <= cfg.cache_len
        )
        if new_len + 1 > cfg.max_total_len or not fits_cache:
            return None
        slot.record.append_observation(obs)
        # slot.cached is advanced by len(chunk) in _extend (pending token + observation)
        return chunk


@dataclasses.dataclass(frozen=True)
class _FailedResult:
    name: str
    text: str
    ok: bool = False
    error_kind: str = "exception"
    seconds: float = 0.0


def generation_stats_line(traj: Trajectory) -> str:
    """One-line summary of a rollout batch (for logs)."""
    s = traj.stats
    reasons, counts = np.unique(traj.stop_reasons, return_counts=True)
    why = ", ".join(f"{r}={c}" for r, c in zip(reasons, counts))
    return (
        f"{len(traj)} trajectories, {s.get('generated_tokens', 0)} tokens in "
        f"{s.get('wall_s', 0.0):.2f}s ({s.get('tokens_per_s', 0.0):.1f} tok/s), "
        f"slot use {s.get('slot_utilisation', 0.0):.2f}; {why}"
    )
