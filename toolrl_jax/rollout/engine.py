"""Multi-turn rollout engine: a host loop over a fixed set of sampler slots.

Each of the ``num_slots`` rows of the jitted :class:`~toolrl_jax.rollout.sampler.Sampler` holds
one trajectory; :mod:`~toolrl_jax.rollout.scheduler` tracks the rows' states (free, ready to
prefill, decoding, awaiting tools) and :mod:`~toolrl_jax.rollout.turns` handles tool turns. The
loop (VerlTool-style asynchronous rollout, arXiv 2509.01055):

1. tool turns whose results arrived are **rendered** as the next message in token ids
   (``turns.ToolTurnHandler.observe``: ToolRL ``<obs>``, hermes ``<tool_response>``, the
   template's native tool role, or ReTool's inline ``<interpreter>`` block), appended to the
   trajectory with loss mask 0, and queued for prefill (AWAITING_TOOLS -> READY);
2. waiting requests are **admitted** into free slots (FREE -> READY); with ``refill=True`` a slot
   is refilled as soon as its trajectory finishes (continuous batching); with ``refill=False`` a
   new wave starts only when every slot is free (batch-synchronous, for comparison);
3. the queued ids are **prefilled** (``Sampler.extend``, one call per length bucket, a group's
   shared prompt once) (READY -> DECODING);
4. a chunk of ``chunk_steps`` tokens is **decoded** for every decoding slot (one jitted
   ``while_loop``; rows stop on EOS, a stop sequence or a length limit). A row that stopped on a
   **tool stop sequence** (``</tool_call>``, ReTool's ``</code>``) has its turn parsed and its
   calls submitted to the environment's executor (DECODING -> AWAITING_TOOLS); a row that ended
   its turn with EOS continues with the task's next user message when the environment has one
   (``turns.ToolTurnHandler.follow_up``: BFCL multi-turn), the others finish (DECODING -> FREE);
5. when nothing decodes and nothing was prefilled, the loop waits for the first tool result.

Token ids are the truth: the generated ids are appended to the trajectory verbatim and are
never decoded and re-encoded to build the next turn (the decoded text is used for parsing
only). Limits: ``max_turns`` generated turns, ``max_obs_tokens`` per tool result (truncated
with a marker), ``max_new_tokens`` per turn and ``max_total_len`` tokens per trajectory.

Single-turn mode (``max_turns=1``, no environment) is plain batched sampling with continuous
refill: the GRPO trainer's first use (``expand_requests`` makes ``num_samples`` requests per
prompt sharing a ``group_id``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from toolrl_jax.chat import Conversation, detect_template
from toolrl_jax.errors import ConfigError
from toolrl_jax.models.sharding import MeshConfig
from toolrl_jax.rollout.sampler import DecodeState, Sampler, bucket_length
from toolrl_jax.rollout.sampling import SamplingConfig
from toolrl_jax.rollout.scheduler import (
    Extend,
    PrefillPlan,
    Slot,
    SlotScheduler,
    SlotState,
    plan_prefill,
    turn_end_reason,
)
from toolrl_jax.rollout.trajectory import Trajectory, TrajectoryRecord
from toolrl_jax.rollout.turns import Environment, ToolTurnHandler, token_variants


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
      truncation_marker: appended to a cut tool result.
      obs_overhead_tokens: room for the template tokens around results (sizes the KV cache).
      pad_multiple: the output ``Trajectory`` is right-padded to a multiple of this.
      share_prompt_prefill: samples of one prompt admitted together share one prefill (the
        cache rows are copied); their tokens are the same as with separate prefills up to
        float rounding.
      mesh: the mesh the trainer's rollouts run on (``data, fsdp, tp`` sizes, one may be -1 =
        the rest) when it should differ from the training mesh (``mesh:``), e.g. ``fsdp`` for
        the update and ``data`` x ``tp`` for decoding; the trainer reshards the weights onto it
        with ``jax.device_put`` after every update (device to device). None: the training
        mesh. With several processes it spans one process's devices (None: the training mesh's
        ``tp``, slots over the rest). An engine built directly takes its ``mesh`` argument.

    How tools are called and observations rendered (format, stop strings, call syntax) is the
    environment's business: :class:`~toolrl_jax.rollout.turns.Environment`.
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
    truncation_marker: str = " ...[truncated]"
    obs_overhead_tokens: int = 64
    pad_multiple: int = 64
    share_prompt_prefill: bool = True
    mesh: MeshConfig | None = None

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
      task: passed to ``executor.start`` (per-trajectory environment state).
      max_turns: most generated turns of this request (None: ``rollout.max_turns``).
      pause_at_tools: end the trajectory right after its first tool turn's observation is
        appended (stop reason ``tool_boundary``; not prefilled), so a strategy can fork there
        (``train.tree``).
    """

    prompt_ids: Sequence[int] | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    group_id: int = 0
    task: Any = None
    max_turns: int | None = None
    pause_at_tools: bool = False


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


# ----------------------------------------------------------------------------- statistics
@dataclasses.dataclass
class RolloutStats:
    """Counters of one ``run`` (``Trajectory.stats`` holds them plus the summary rates)."""

    decode_calls: int = 0
    decode_steps: int = 0
    active_row_steps: int = 0
    extend_calls: int = 0
    prefill_tokens: int = 0
    decode_s: float = 0.0
    extend_s: float = 0.0
    wait_s: float = 0.0
    busy_slot_s: float = 0.0

    def add_decode(self, steps: int, busy_row_steps: int, seconds: float) -> None:
        self.decode_calls += 1
        self.decode_steps += steps
        self.active_row_steps += busy_row_steps
        self.decode_s += seconds
        if steps:
            self.busy_slot_s += seconds * busy_row_steps / steps

    def add_extend(self, tokens: int, seconds: float) -> None:
        self.extend_calls += 1
        self.prefill_tokens += tokens
        self.extend_s += seconds

    def summary(self, records: Sequence[TrajectoryRecord], wall: float, num_slots: int) -> dict:
        """Counters plus ``tool_turns``, ``wall_s``, ``generated_tokens``, ``tokens_per_s``,
        ``slot_utilisation`` = active slot-steps / (num_slots x decode steps),
        ``slot_occupancy`` = time-average fraction of slots decoding, ``decode_time_fraction``."""
        generated = int(sum(sum(r.loss_mask) for r in records))
        steps, per_wall = self.decode_steps, (1.0 / wall if wall > 0 else 0.0)
        return dict(
            dataclasses.asdict(self),
            tool_turns=sum(len({c["turn"] for c in r.tool_calls}) for r in records),
            wall_s=wall,
            generated_tokens=generated,
            tokens_per_s=generated * per_wall,
            slot_utilisation=self.active_row_steps / (num_slots * steps) if steps else 0.0,
            slot_occupancy=self.busy_slot_s * per_wall / num_slots,
            decode_time_fraction=self.decode_s * per_wall,
        )


# ----------------------------------------------------------------------------- engine
class RolloutEngine:
    """Rolls out requests into a :class:`Trajectory` (see module docstring).

    Args:
      model: the policy (``Decoder``).
      config: :class:`RolloutConfig`.
      tokenizer: HF tokenizer (needed for chat messages, stop strings and chat rendering of tool
        results).
      template: chat template (``chat.detect_template(tokenizer)`` by default).
      environment: :class:`~toolrl_jax.rollout.turns.Environment` (executor, call extractor,
        observation format, stop strings); multi-turn mode is ``config.max_turns > 1`` with one.
      eos_ids: ids that end a trajectory; default the template's end-of-turn ids and the
        tokenizer's EOS, else ``model.config.eos_token_ids``.
      stop_sequences / tool_stop_sequences: extra stop id sequences (ending the trajectory /
        triggering tools), added to those from the environment's strings.
      init_cache: passed to the sampler (tests with fake models).
      jit_wrapper: passed to the sampler.
      mesh: passed to the sampler: slots over ``('data', 'fsdp')``, KV heads over ``tp`` (the
        model's parameters must live on it).
    """

    def __init__(
        self,
        model: Any,
        config: RolloutConfig,
        *,
        tokenizer: Any = None,
        template: Any = None,
        environment: Environment | None = None,
        eos_ids: Sequence[int] | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
        tool_stop_sequences: Sequence[Sequence[int]] = (),
        init_cache: Callable | None = None,
        jit_wrapper: Callable | None = None,
        mesh: Any = None,
    ):
        if config.max_turns > 1 and environment is None:
            raise ConfigError(
                "rollout.max_turns > 1 needs an environment "
                "(environment=Environment(executor=..., extract_calls=...))"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.environment = environment
        self._requests: list[RolloutRequest] = []
        self.multi_turn = config.max_turns > 1 and environment is not None
        self.template = template if template is not None else self._detect_template()
        self.turns = self._turn_handler() if self.multi_turn else None
        tool_seqs, end_seqs = self._stop_sequences(stop_sequences, tool_stop_sequences)
        self.num_tool_stops = len(tool_seqs)  # table rows [0, num_tool_stops) trigger tools
        if eos_ids is None:
            eos_ids = self._default_eos_ids(model)
        self.eos_ids = tuple(int(t) for t in eos_ids)
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
            mesh=mesh,
        )

    # ------------------------------------------------------------------ construction
    def _detect_template(self) -> Any:
        if self.tokenizer is None:
            return None
        try:
            return detect_template(self.tokenizer)
        except ConfigError:
            if self.multi_turn and self.environment.render_observation is None:
                raise  # rendering tool results needs the chat format
            return None  # single-turn on prompt ids: no chat format needed

    def _turn_handler(self) -> ToolTurnHandler:
        return ToolTurnHandler(
            self.environment,
            tokenizer=self.tokenizer,
            template=self.template,
            max_obs_tokens=self.config.max_obs_tokens,
            truncation_marker=self.config.truncation_marker,
        )

    def _stop_sequences(
        self, stop_sequences: Sequence[Sequence[int]], tool_stop_sequences: Sequence[Sequence[int]]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """``(tool stops, trajectory stops)`` as id lists; single-turn: no tool stops (the
        explicit ``tool_stop_sequences`` then end the trajectory)."""
        tool = [list(s) for s in tool_stop_sequences]
        end = [list(s) for s in stop_sequences]
        env, tok = self.environment, self.tokenizer
        if tok is not None and env is not None:
            if self.multi_turn:
                tool += [v for v in token_variants(tok, env.tool_stop_strings) if v not in tool]
            end += [v for v in token_variants(tok, env.stop_strings) if v not in end]
        return (tool, end) if self.multi_turn else ([], end + tool)

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

    @property
    def executor(self) -> Any:
        """The environment's tool executor (None without an environment)."""
        return None if self.environment is None else self.environment.executor

    def set_params(self, params: Any) -> None:
        """New policy weights (``nnx.state`` of the model) for the next rollouts."""
        self.sampler.set_params(params)

    # ------------------------------------------------------------------ main loop
    def run(
        self,
        requests: Sequence[RolloutRequest | Sequence[int]],
        *,
        refill: bool | None = None,
        seed: int | None = None,
    ) -> Trajectory:
        """Roll out every request; rows of the result are in request order (uid = index).

        ``Trajectory.stats`` holds (:class:`RolloutStats`): ``generated_tokens``, ``wall_s``,
        ``tokens_per_s``; ``slot_utilisation`` = active slot-steps / (num_slots x decode steps)
        (decode compute spent on live rows); ``slot_occupancy`` = time-average fraction of
        slots decoding (0 while every slot waits for tools); ``decode_time_fraction``; counts of
        decode / extend calls, decode steps, prefilled tokens, tool turns; seconds in decode,
        extend and waiting.
        ``refill`` and ``seed`` override the config for this call (compiled programs are shared;
        e.g. a trainer passes a new seed every step).
        """
        cfg = self.config
        requests = self._checked_requests(requests)
        refill = cfg.refill if refill is None else bool(refill)
        scheduler = SlotScheduler(cfg.num_slots, requests, refill=refill)
        self._requests = requests  # uid -> request (per-request turn limits)
        stats = RolloutStats()
        state = self.sampler.init_state(cfg.seed if seed is None else int(seed))
        t0 = time.perf_counter()
        try:
            while scheduler.busy():
                extends = self._resume_tool_turns(scheduler)  # AWAITING_TOOLS -> READY / FREE
                extends += scheduler.admit(self._start_trajectory)  # FREE -> READY
                if extends:
                    state = self._extend(state, scheduler, extends, stats)  # READY -> DECODING
                if scheduler.in_state(SlotState.DECODING):
                    state = self._decode(state, scheduler, stats)  # -> AWAITING_TOOLS / FREE
                elif not extends:
                    self._wait_for_tools(scheduler, stats)
        finally:  # an error or interrupt mid-run must not leak per-trajectory tool state
            if self.turns is not None:
                for uid in scheduler.occupied_uids():
                    self.turns.finish(uid)
        records = scheduler.records()
        return Trajectory.from_records(
            records,
            pad_id=self._pad_id(),
            pad_multiple=cfg.pad_multiple,
            stats=stats.summary(records, time.perf_counter() - t0, cfg.num_slots),
        )

    # ------------------------------------------------------------------ requests
    def _checked_requests(self, requests: Sequence[Any]) -> list[RolloutRequest]:
        """Requests as :class:`RolloutRequest`; prompts that cannot fit fail before any work."""
        requests = [
            r if isinstance(r, RolloutRequest) else RolloutRequest(prompt_ids=list(r))
            for r in requests
        ]
        for uid, r in enumerate(requests):
            if r.prompt_ids is not None:
                self._check_prompt(uid, r.prompt_ids)
        return requests

    def _check_prompt(self, uid: int, prompt: Sequence[int]) -> None:
        if not prompt:
            raise ConfigError(f"request {uid}: empty prompt")
        if len(prompt) + 1 > self.config.max_total_len:
            raise ConfigError(
                f"request {uid}: prompt of {len(prompt)} tokens leaves no room under "
                f"rollout.max_total_len={self.config.max_total_len}; raise it or shorten the prompt"
            )

    def _prompt(self, uid: int, request: RolloutRequest) -> tuple[list[int], Any]:
        """The prompt ids and, for chat messages, the ``Conversation`` that rendered them."""
        if request.messages is not None:
            if self.tokenizer is None or self.template is None:
                raise ConfigError(
                    "RolloutRequest.messages needs the engine's tokenizer with a chat template; "
                    "pass prompt_ids instead"
                )
            conv = Conversation.from_messages(
                self.tokenizer, self.template, list(request.messages), add_generation_prompt=True
            )
            return list(conv.ids), conv
        if request.prompt_ids is None:
            raise ConfigError(f"request {uid}: give prompt_ids or messages")
        return [int(t) for t in request.prompt_ids], None

    def _start_trajectory(self, uid: int, request: RolloutRequest) -> TrajectoryRecord:
        prompt, conversation = self._prompt(uid, request)
        self._check_prompt(uid, prompt)
        if self.turns is not None:
            self.turns.start(uid, request.task, prompt, conversation)
        return TrajectoryRecord.from_prompt(uid, request.group_id, prompt)

    def _finish(self, scheduler: SlotScheduler, i: int, reason: str) -> None:
        record = scheduler.finish(i, reason)
        if self.turns is not None:
            self.turns.finish(record.uid)

    # ------------------------------------------------------------------ prefill
    def _extend(
        self,
        state: DecodeState,
        scheduler: SlotScheduler,
        extends: list[Extend],
        stats: RolloutStats,
    ) -> DecodeState:
        """Prefill the READY slots' ids (:func:`~toolrl_jax.rollout.scheduler.plan_prefill`)."""
        t = time.perf_counter()
        plan: PrefillPlan = plan_prefill(extends, share_prompts=self.config.share_prompt_prefill)
        state = self._extend_by_bucket(state, plan.first)
        if plan.copies:
            src, dst = [c.src for c in plan.copies], [c.dst for c in plan.copies]
            state = self.sampler.copy_rows(state, src, dst)
        state = self._extend_by_bucket(state, plan.last)
        scheduler.extended(extends)
        stats.add_extend(plan.num_tokens, time.perf_counter() - t)
        return state

    def _extend_by_bucket(self, state: DecodeState, extends: Sequence[Extend]) -> DecodeState:
        """One ``Sampler.extend`` per length bucket."""
        buckets: dict[int, list[Extend]] = {}
        for e in extends:
            length = bucket_length(len(e.ids), minimum=self.sampler.min_bucket)
            buckets.setdefault(length, []).append(e)
        for _, group in sorted(buckets.items()):
            state = self.sampler.extend(
                state,
                [e.slot for e in group],
                [list(e.ids) for e in group],
                reset=[e.reset for e in group],
                uids=[-1 if e.uid is None else e.uid for e in group],
                max_tokens=self.config.max_new_tokens,
                max_total=self.config.max_total_len,
            )
        return state

    # ------------------------------------------------------------------ decode
    def _decode(
        self, state: DecodeState, scheduler: SlotScheduler, stats: RolloutStats
    ) -> DecodeState:
        """One chunk of decode steps; rows that stopped end their turn."""
        t = time.perf_counter()
        state, steps, busy = self.sampler.decode(state, self.config.chunk_steps)
        active, code, which, num = jax.device_get(
            (state.active, state.stop_reason, state.stop_which, state.num_tokens)
        )
        stats.add_decode(int(steps), int(busy), time.perf_counter() - t)
        stopped = [i for i in scheduler.in_state(SlotState.DECODING) if not active[i]]
        if stopped:
            tokens, logprobs = jax.device_get((state.tokens, state.logprobs))
            for i in stopped:
                n = int(num[i])
                record = scheduler.end_turn(i, tokens[i, :n].tolist(), logprobs[i, :n].tolist())
                self._after_turn(scheduler, i, record, int(code[i]), int(which[i]))
        return state

    def _after_turn(
        self, scheduler: SlotScheduler, i: int, record: TrajectoryRecord, code: int, which: int
    ) -> None:
        """DECODING -> FREE (the trajectory ends) or AWAITING_TOOLS (the calls are submitted)."""
        turns = len(record.turn_starts)
        limit = self._requests[record.uid].max_turns
        max_turns = self.config.max_turns if limit is None else limit
        reason = turn_end_reason(
            code,
            which,
            num_tool_stops=self.num_tool_stops,
            turns=turns,
            max_turns=max_turns,
        )
        turn_ids = record.ids[record.turn_starts[-1] : record.turn_ends[-1]]
        if reason == "eos" and self.turns is not None and turns < max_turns:
            user_turn = self.turns.follow_up(record.uid, turns - 1, turn_ids)
            if user_turn is not None:  # the task's next user message follows (turns.py)
                scheduler.await_tools(i, user_turn)
                return
        if reason is not None:
            self._finish(scheduler, i, reason)
            return
        scheduler.await_tools(i, self.turns.submit(record.uid, turns - 1, turn_ids))

    # ------------------------------------------------------------------ tools
    def _resume_tool_turns(self, scheduler: SlotScheduler) -> list[Extend]:
        """Observations of the tool turns that are done, as extends; a trajectory whose
        observation does not fit ends with 'length'."""
        extends = []
        for i in scheduler.tools_done():
            slot = scheduler.slots[i]
            observation = self.turns.observe(slot.record.uid, slot.tool_turn)
            slot.record.tool_calls.extend(observation.tool_calls)
            if self._requests[slot.record.uid].pause_at_tools and self._fits(
                    slot, len(observation.ids)):
                slot.record.append_observation(observation.ids)
                self._finish(scheduler, i, "tool_boundary")
            elif self._fits(slot, len(observation.ids)):
                extends.append(scheduler.resume(i, observation.ids))
            else:
                self._finish(scheduler, i, "length")
        return extends

    def _fits(self, slot: Slot, num_obs: int) -> bool:
        """Room for the observation and one more token, in the trajectory and the cache (the
        extend holds the pending token plus the observation)."""
        cfg = self.config
        chunk = bucket_length(num_obs + 1, minimum=self.sampler.min_bucket)
        return (
            len(slot.record.ids) + num_obs + 1 <= cfg.max_total_len
            and slot.cached + chunk <= cfg.cache_len
        )

    def _wait_for_tools(self, scheduler: SlotScheduler, stats: RolloutStats) -> None:
        """Nothing decodes: block until the first tool result (at most 1 s)."""
        futures = scheduler.tool_futures()
        if futures:
            t = time.perf_counter()
            concurrent.futures.wait(
                futures, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED
            )
            stats.wait_s += time.perf_counter() - t

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
        return pad if isinstance(pad, int) else 0


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
