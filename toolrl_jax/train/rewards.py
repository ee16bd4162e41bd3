"""Reward components by name (``reward.components``), composed with weights.

``reward.components: {toolrl: 1.0, otc: 0.5, overlong: 1.0}`` gives, per trajectory,

    R = sum_c w_c * r_c

and logs ``reward/<c>`` (and each component's parts, ``reward/<c>_<part>``) every step. A
component is ``f(ctx: RewardContext, cfg) -> ComponentScore`` where ``cfg`` is the section of
the same name under ``reward:`` (None if the component has no options). It sees the whole batch
(trajectories, tasks, group ids, step), so group-aware rewards (OTC: n = fewest calls among the
group's correct answers) fit; it returns ``[B]`` float32. Add one::

    @REWARD_COMPONENTS.register("brevity")
    def brevity(ctx: RewardContext, cfg) -> ComponentScore:
        return ComponentScore(-ctx.response_lengths / 1000.0)

Per-turn rewards. A component may also score each assistant turn: ``ComponentScore.turns``
``[B, K]`` (``K = ctx.num_turn_slots``, NaN where row ``b`` has no turn ``k`` or the turn has no
reward of its own); mark it with :func:`scores_turns` so a config choosing a per-turn estimator
(``algo.advantage.estimator=turn_grpo``) can be checked before the run. :func:`score` composes

    turn_rewards[b, k] = sum_{c scoring turns} w_c * turns_c[b, k],   turn_mask = finite

(a turn is rewarded only where every turn-scoring component rewards it). ``ftrl`` scores every
assistant turn (FTRL's ``2s/(k+1)``); ``bfcl`` scores each BFCL *user* turn and attaches it to
the last assistant turn of that user turn (see :func:`user_turn_spans`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from toolrl_jax.data.task import ToolTask
from toolrl_jax.envgen import score_task, trajectory_turns
from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.eval.bfcl import call_strings
from toolrl_jax.eval.bfcl_env import bfcl_turn_checks
from toolrl_jax.registry import Registry
from toolrl_jax.rewards.config import ToolRLRewardConfig
from toolrl_jax.rewards.code_use import CodeUseConfig, cell_counts, code_use_reward
from toolrl_jax.rewards.math import MathVerifier, OutcomeRewardConfig, extract_boxed
from toolrl_jax.rewards.otc import OTCConfig, otc_reward
from toolrl_jax.rewards.shaping import (
    OverlongConfig,
    ToolStarConfig,
    dapo_overlong_penalty,
    tool_star_reward,
)
from toolrl_jax.rewards.toolrl import score_texts
from toolrl_jax.rl.advantages import ESTIMATORS, TokenEstimator
from toolrl_jax.rollout.trajectory import Trajectory
from toolrl_jax.toolcalls.parse import parse_completion


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """The YAML ``reward:`` section: weights, and each component's own config.

    Attributes:
      components: component name -> weight (a weight of 0 disables one). A mapping written in
        YAML replaces the default ``{toolrl: 1.0}``; a dotted override such as
        ``reward.components.otc=0.5`` adds to it.
      toolrl: :class:`~toolrl_jax.rewards.config.ToolRLRewardConfig` (ToolRL, arXiv 2504.13958).
      otc: :class:`~toolrl_jax.rewards.otc.OTCConfig` (OTC, arXiv 2504.14870).
      overlong: :class:`~toolrl_jax.rewards.shaping.OverlongConfig` (DAPO, arXiv 2503.14476);
        0 lengths = derived from ``rollout.max_new_tokens``.
      tool_star: :class:`~toolrl_jax.rewards.shaping.ToolStarConfig` (Tool-Star, arXiv 2505.16410).
      retool: :class:`~toolrl_jax.rewards.math.OutcomeRewardConfig` (ReTool, arXiv 2504.11536).
      code_use: :class:`~toolrl_jax.rewards.code_use.CodeUseConfig` (our shaping of code use).
    """

    components: dict[str, float] = dataclasses.field(default_factory=lambda: {"toolrl": 1.0})
    toolrl: ToolRLRewardConfig = dataclasses.field(default_factory=ToolRLRewardConfig)
    otc: OTCConfig = dataclasses.field(default_factory=OTCConfig)
    overlong: OverlongConfig = dataclasses.field(default_factory=OverlongConfig)
    tool_star: ToolStarConfig = dataclasses.field(default_factory=ToolStarConfig)
    retool: OutcomeRewardConfig = dataclasses.field(default_factory=OutcomeRewardConfig)
    code_use: CodeUseConfig = dataclasses.field(default_factory=CodeUseConfig)

    def __post_init__(self) -> None:
        weights = {}
        for name, w in dict(self.components).items():
            REWARD_COMPONENTS.get(name)
            try:
                w = float(w)
            except (TypeError, ValueError):
                raise ConfigError(f"reward.components.{name}: weight must be a number, got {w!r}") from None
            if not np.isfinite(w):
                raise ConfigError(f"reward.components.{name}: weight must be finite, got {w}")
            weights[name] = w
        if not any(w != 0 for w in weights.values()):
            raise ConfigError("reward.components: give at least one component a non-zero weight, "
                              "e.g. reward.components.toolrl=1.0")
        object.__setattr__(self, "components", weights)

    @property
    def active(self) -> dict[str, float]:
        return {k: w for k, w in self.components.items() if w != 0}


class ComponentScore(NamedTuple):
    """A component's reward ``values`` [B], optional named ``parts`` [B] (logged) and optional
    per-turn rewards ``turns`` [B, K] float32 (reward of assistant turn ``k`` of row ``b``; NaN =
    no such turn, or no reward of its own)."""

    values: np.ndarray
    parts: dict[str, np.ndarray] = {}
    turns: np.ndarray | None = None


class RewardContext:
    """What a reward component sees: one batch of trajectories with their tasks.

    Decoded texts are for scoring only (token ids stay the truth). Expensive shared values
    (decoded texts, the ToolRL scores other components reuse) are computed once, on first use.
    """

    def __init__(self, *, trajectory: Trajectory, tasks: Sequence[ToolTask],
                 group_ids: np.ndarray, step: int, tokenizer: Any, config: RewardConfig,
                 max_new_tokens: int):
        self.trajectory = trajectory
        self.tasks = list(tasks)
        self.group_ids = np.asarray(group_ids, np.int32)
        self.step = int(step)
        self.tokenizer = tokenizer
        self.config = config
        self.max_new_tokens = int(max_new_tokens)

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def num_turn_slots(self) -> int:
        """``K``: the turn axis of ``trajectory.turn_starts`` (and of ``ComponentScore.turns``)."""
        return int(np.asarray(self.trajectory.turn_starts).shape[1])

    def empty_turns(self) -> np.ndarray:
        """``[B, K]`` float32 NaN, to fill with per-turn rewards."""
        return np.full((len(self), self.num_turn_slots), np.nan, np.float32)

    @functools.cached_property
    def first_turn_texts(self) -> list[str]:
        """The first assistant turn of each row (what ToolRL scores)."""
        t = self.trajectory
        return [self.tokenizer.decode(t.turn_ids(i, 0).tolist(), skip_special_tokens=True)
                for i in range(len(t))]

    @functools.cached_property
    def completion_texts(self) -> list[str]:
        """Everything after the prompt (turns and observations)."""
        t = self.trajectory
        return [t.completion_text(i, self.tokenizer, skip_special_tokens=True)
                for i in range(len(t))]

    @functools.cached_property
    def response_lengths(self) -> np.ndarray:
        """Generated tokens per row ([B] int32, observations excluded)."""
        return (np.asarray(self.trajectory.loss_mask) > 0).sum(1).astype(np.int32)

    @functools.cached_property
    def toolrl_scores(self) -> dict[str, np.ndarray]:
        return score_texts(self.first_turn_texts, [t.ground_truth for t in self.tasks],
                           self.step, self.config.toolrl)

    @functools.cached_property
    def math_correct(self) -> np.ndarray:
        """[B] bool: the last ``\\boxed{}`` answer equals the task's answer (math-verify)."""
        golds = [str(t.meta.get("answer", t.ground_truth)) for t in self.tasks]
        answers = [extract_boxed(c) for c in self.completion_texts]
        with MathVerifier(backend="thread") as verifier:
            return np.asarray(verifier.verify_many(answers, golds), bool)

    @functools.cached_property
    def correct(self) -> np.ndarray:
        """[B] bool: the answer is right: for math tasks (``meta['answer']``) the boxed answer is
        equivalent, else the ToolRL correctness is at its maximum (the calls match)."""
        if self.tasks and all("answer" in t.meta for t in self.tasks):
            return self.math_correct
        hi = self.config.toolrl.correctness_range[1]
        return self.toolrl_scores["correctness"] >= hi - 1e-6

    @functools.cached_property
    def num_tool_calls(self) -> np.ndarray:
        """[B] int32 tool calls executed (multi-turn) or written in the first turn (single-turn)."""
        executed = np.asarray(self.trajectory.num_tool_calls, np.int32)
        if executed.any():
            return executed
        syntax = self.config.toolrl.syntax
        return np.array([len(parse_completion(t, syntax).tool_calls)
                         for t in self.first_turn_texts], np.int32)


Component = Callable[[RewardContext, Any], ComponentScore]
REWARD_COMPONENTS: Registry[Component] = Registry("reward component",
                                                  config_key="reward.components")


def scores_turns(component: Component) -> Component:
    """Marks a component that returns ``ComponentScore.turns`` (checked by
    :func:`check_turn_credit` before a run with a per-turn estimator)."""
    component.scores_turns = True  # type: ignore[attr-defined]
    return component


def turn_scoring_components(cfg: RewardConfig) -> list[str]:
    """The active components marked with :func:`scores_turns`."""
    return [n for n in cfg.active if getattr(REWARD_COMPONENTS.get(n), "scores_turns", False)]


def check_turn_credit(reward: RewardConfig, algo: Any) -> None:
    """Fails before the run when ``algo.advantage.estimator`` needs per-turn rewards
    (``TokenEstimator.uses_turn_rewards``: ``turn_grpo``, ``gae`` with
    ``algo.gae.turn_reward_coef > 0``) and no active reward component scores turns."""
    estimator = ESTIMATORS.get(algo.advantage.estimator)
    if not (isinstance(estimator, TokenEstimator) and estimator.uses_turn_rewards(algo)):
        return
    name = algo.advantage.estimator
    if not turn_scoring_components(reward):
        scoring = sorted(n for n in REWARD_COMPONENTS
                         if getattr(REWARD_COMPONENTS.get(n), "scores_turns", False))
        raise ConfigError(
            f"algo.advantage.estimator={name} needs per-turn rewards, and no active "
            f"reward.components scores turns: add one of {', '.join(scoring)} (e.g. "
            f"reward.components.{scoring[0] if scoring else 'ftrl'}=1.0), or use "
            "algo.advantage.estimator=grpo")
    if getattr(algo, "dynamic_sampling", False):
        raise ConfigError(f"algo.advantage.estimator={name} does not support "
                          "algo.dynamic_sampling yet (its group selection drops the per-turn "
                          "rewards); set algo.dynamic_sampling=false")


class Scores(NamedTuple):
    """Composite reward ``total`` [B] and each weighted component's values and parts.

    ``turn_rewards`` ``[B, K]`` / ``turn_mask`` ``[B, K]`` bool: the weighted per-assistant-turn
    rewards of the components that score each turn (None when none does); per-token
    estimators (:class:`toolrl_jax.rl.advantages.TokenEstimator`) read them.
    """

    total: np.ndarray
    components: dict[str, np.ndarray]
    parts: dict[str, np.ndarray]
    turn_rewards: np.ndarray | None = None
    turn_mask: np.ndarray | None = None

    def metrics(self) -> dict[str, float]:
        out = {"reward": float(np.mean(self.total))}
        out.update({f"reward/{k}": float(np.mean(v)) for k, v in self.components.items()})
        out.update({f"reward/{k}": float(np.nanmean(v)) for k, v in self.parts.items()
                    if np.isfinite(v).any()})
        return out


def score(ctx: RewardContext) -> Scores:
    """``R = sum_c w_c r_c`` over ``ctx.config``'s active components, and the per-turn rewards
    ``turn_rewards = sum_c w_c turns_c`` over those that return turns (``[B, K]``; NaN where a
    component has no reward for the turn), ``turn_mask = isfinite(turn_rewards)``; both None
    when no component scores turns."""
    cfg = ctx.config
    total = np.zeros(len(ctx), np.float32)
    components, parts = {}, {}
    turn_rewards = None
    for name, weight in cfg.active.items():
        out = REWARD_COMPONENTS.get(name)(ctx, getattr(cfg, name, None))
        values = np.asarray(out.values, np.float32).reshape(len(ctx))
        components[name] = values
        parts.update({f"{name}_{k}": np.asarray(v, np.float32) for k, v in out.parts.items()})
        total += np.float32(weight) * values
        if out.turns is not None:
            turns = _turn_array(out.turns, ctx, name)
            weighted = np.float32(weight) * turns
            turn_rewards = weighted if turn_rewards is None else turn_rewards + weighted
    if turn_rewards is None:
        return Scores(total=total, components=components, parts=parts)
    mask = np.isfinite(turn_rewards)
    return Scores(total=total, components=components, parts=parts,
                  turn_rewards=np.where(mask, turn_rewards, 0.0).astype(np.float32),
                  turn_mask=mask)


def _turn_array(turns: Any, ctx: RewardContext, name: str) -> np.ndarray:
    """A component's ``turns`` as ``[B, K]`` float32 (narrower ones padded with NaN)."""
    turns = np.asarray(turns, np.float32)
    b, k = len(ctx), ctx.num_turn_slots
    if turns.ndim != 2 or turns.shape[0] != b or turns.shape[1] > k:
        raise ValueError(f"reward component {name!r}: turns must be [B={b}, K<={k}], "
                         f"got {turns.shape}")
    return np.pad(turns, ((0, 0), (0, k - turns.shape[1])), constant_values=np.nan)


def user_turn_spans(trajectory: Trajectory, row: int) -> list[list[int]]:
    """The assistant turns of each user turn of row ``row``: ``[[0, 1], [2], ...]``.

    With an environment that feeds user turns (``rollout.turns.Environment.next_user_turn``),
    an assistant turn that ran no tool (no call record of that turn in
    ``trajectory.tool_calls``: it ended with EOS, and the next user message followed) closes
    its user turn, and so does the row's last turn (whatever ended it). A tool turn always has
    a record (its calls, or a parse error), so the spans are exact.
    """
    with_calls = {c.get("turn") for c in trajectory.tool_calls[row]}
    spans: list[list[int]] = [[]]
    n = int(trajectory.num_turns[row])
    for k in range(n):
        spans[-1].append(k)
        if k not in with_calls and k < n - 1:
            spans.append([])
    return spans if spans[0] else []


def check_reward_capacity(cfg: RewardConfig, tasks: Sequence[ToolTask]) -> None:
    """The ToolRL reward's static shapes must hold every ground truth: fail when the data is
    loaded, naming the key, not mid-run."""
    if "toolrl" not in cfg.active:
        return
    r = cfg.toolrl
    calls = max((len(t.ground_truth_calls) for t in tasks), default=0)
    args = max((len(c.get("arguments") or {}) for t in tasks for c in t.ground_truth_calls),
               default=0)
    if calls > r.max_calls or args > r.max_args:
        raise ConfigError(
            f"reward.toolrl.max_calls={r.max_calls} / max_args={r.max_args} are too small for "
            f"the data (a ground truth has {calls} calls / {args} arguments); raise them")


# ----------------------------------------------------------------------------- built-ins
@REWARD_COMPONENTS.register("toolrl")
def toolrl(ctx: RewardContext, cfg: ToolRLRewardConfig) -> ComponentScore:
    """ToolRL: ``R_format + R_correct (+ R_length)`` of the first assistant turn."""
    s = ctx.toolrl_scores
    return ComponentScore(s["total"], {k: s[k] for k in ("format", "correctness", "length")})


@REWARD_COMPONENTS.register("otc")
def otc(ctx: RewardContext, cfg: OTCConfig) -> ComponentScore:
    """OTC: ``alpha * r_tool(m, n) * r_correct``, n = fewest calls among the group's correct rows."""
    correct = ctx.correct.astype(np.float32)
    values = otc_reward(ctx.num_tool_calls, correct, ctx.group_ids, config=cfg)
    return ComponentScore(np.asarray(values), {"calls": ctx.num_tool_calls.astype(np.float32)})


@REWARD_COMPONENTS.register("overlong")
def overlong(ctx: RewardContext, cfg: OverlongConfig) -> ComponentScore:
    """DAPO's soft overlong penalty of the generated length (0, a ramp, then -1)."""
    resolved = cfg.resolved(ctx.max_new_tokens)
    return ComponentScore(np.asarray(dapo_overlong_penalty(ctx.response_lengths, resolved)))


@REWARD_COMPONENTS.register("tool_star")
def tool_star(ctx: RewardContext, cfg: ToolStarConfig) -> ComponentScore:
    """Tool-Star: −1 on bad format; accuracy + bonus when correct with ≥ min_tools distinct tools."""
    s = ctx.toolrl_scores
    fmt_ok = s["format"] >= ctx.config.toolrl.format_range[1] - 1e-6
    distinct = np.array([len({c.get("name") for c in calls if c.get("name")})
                         for calls in ctx.trajectory.tool_calls], np.int32)
    return ComponentScore(np.asarray(tool_star_reward(fmt_ok, ctx.correct.astype(np.float32),
                                                      distinct, cfg)))


@REWARD_COMPONENTS.register("retool")
def retool(ctx: RewardContext, cfg: OutcomeRewardConfig) -> ComponentScore:
    """ReTool's outcome reward: ``correct`` if the last ``\\boxed{}`` equals the task's answer.

    Parts (logged as ``reward/retool_<part>``, ReTool's behaviour metrics): ``correct`` (its mean
    is pass@1), ``code`` (1 if the answer ran at least one cell: the mean is the code-use share)."""
    cells = cell_counts(ctx.completion_texts).cells
    return ComponentScore(np.where(ctx.math_correct, np.float32(cfg.correct),
                                   np.float32(cfg.wrong)).astype(np.float32),
                          {"correct": ctx.math_correct.astype(np.float32),
                           "code": (cells >= 1).astype(np.float32)})


@REWARD_COMPONENTS.register("code_use")
def code_use(ctx: RewardContext, cfg: CodeUseConfig) -> ComponentScore:
    """Code-use shaping (ours, not the paper's): a bonus when a correct answer ran code, a
    penalty for the share of cells that failed."""
    counts = cell_counts(ctx.completion_texts)
    values = code_use_reward(ctx.math_correct, counts.cells, counts.failed, cfg)
    return ComponentScore(np.asarray(values), {"cells": counts.cells.astype(np.float32),
                                               "failed_cells": counts.failed.astype(np.float32)})


@REWARD_COMPONENTS.register("ftrl")
@scores_turns
def ftrl(ctx: RewardContext, cfg: None) -> ComponentScore:
    """FTRL (arXiv 2508.08791) on built environments: per assistant turn ``2s/(k+1)`` (s calls
    solving a still-open sub-goal, k calls), a text answer ``1/(1+#unsolved)``.

    ``turns`` [B, K]: each assistant turn's reward (the per-turn credit of
    ``algo.advantage.estimator=turn_grpo``). ``values`` [B] (the outcome): the mean of the
    row's turn rewards (0 without turns). Why the mean and not final-state success: FTRL
    defines its reward per turn only, with no separate outcome term, and the mean is that
    reward summarised per trajectory; it stays dense for trajectory-level estimators (``grpo``),
    where binary success gives mostly constant groups on a small model; and under
    ``turn_grpo`` it adds a trajectory baseline to the per-turn term (weight it with
    ``algo.turn_advantage.turn_coef``). Sub-goal completion and final-state success are logged
    as parts."""
    syntax = ctx.config.toolrl.syntax
    episodes = [score_task(task, trajectory_turns(ctx.trajectory, i, ctx.tokenizer, syntax))
                for i, task in enumerate(ctx.tasks)]
    values = np.array([np.mean(e.turn_rewards) if e.turn_rewards else 0.0 for e in episodes])
    turns = ctx.empty_turns()
    for i, e in enumerate(episodes):
        rewards = list(e.turn_rewards)[:turns.shape[1]]
        turns[i, :len(rewards)] = rewards
    success = np.array([e.success for e in episodes], np.float32)
    parts = {"success": success,
             "completion": np.array([e.completion for e in episodes], np.float32)}
    levels = np.array([str(t.meta.get("level", "")) for t in ctx.tasks])
    for level in sorted(set(levels) - {""}):  # NaN elsewhere: the logged mean is per level
        parts[f"success_{level}"] = np.where(levels == level, success, np.nan)
    return ComponentScore(values.astype(np.float32), parts, turns)


@REWARD_COMPONENTS.register("bfcl")
@scores_turns
def bfcl(ctx: RewardContext, cfg: None) -> ComponentScore:
    """BFCL multi-turn (``env.name=bfcl_multi_turn``): bfcl-eval's checks of every user turn.

    A *user turn* is one request of the entry; the model answers it in one or more assistant
    turns (tool calls, then a turn without a call, after which the environment feeds the next
    user turn). Per user turn ``u`` reached, the reward is 1 if bfcl-eval's state check and
    response check pass after it (``eval.bfcl_env.bfcl_turn_checks``; the calls the engine
    executed, in BFCL call-string form), else 0. ``turns`` [B, K] carries it on the *last
    assistant turn of user turn u* (the others are NaN: ``turn_grpo`` credits them with it,
    see ``rl.turn_advantages``). ``values`` [B]: bfcl-eval's ``multi_turn_checker`` verdict
    on the entry (1 when every user turn was reached and passes: BFCL's multi-turn accuracy).
    Parts: ``turns_passed`` (share of the entry's user turns passed), ``user_turns`` (reached).
    """
    turns = ctx.empty_turns()
    values = np.zeros(len(ctx), np.float32)
    passed = np.zeros(len(ctx), np.float32)
    reached = np.zeros(len(ctx), np.float32)
    for i, task in enumerate(ctx.tasks):
        if "turn_ground_truth" not in task.meta:
            raise DataError(f"reward.components.bfcl: task {task.id!r} is not a BFCL multi-turn "
                            "task; use data.source=bfcl_multi_turn")
        spans = user_turn_spans(ctx.trajectory, i)
        checks = bfcl_turn_checks(task, [_step_calls(ctx.trajectory.tool_calls[i], span)
                                         for span in spans])
        for span, ok in zip(spans, checks.turns):
            turns[i, span[-1]] = float(ok)
        values[i] = float(checks.valid)
        passed[i] = sum(checks.turns) / max(len(task.meta["turn_ground_truth"]), 1)
        reached[i] = len(checks.turns)
    return ComponentScore(values, {"turns_passed": passed, "user_turns": reached}, turns)


def _step_calls(records: Sequence[dict], span: Sequence[int]) -> list[list[str]]:
    """BFCL call strings of each assistant turn in ``span`` that made calls (parse errors,
    which have no name, are not calls)."""
    steps = []
    for k in span:
        calls = [{"name": c["name"], "arguments": dict(c.get("arguments") or {})}
                 for c in records if c.get("turn") == k and c.get("name") is not None]
        if calls:
            steps.append(call_strings(calls))
    return steps
