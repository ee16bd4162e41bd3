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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from toolrl_jax.data.task import ToolTask
from toolrl_jax.envgen import score_task, trajectory_turns
from toolrl_jax.errors import ConfigError
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
    """A component's reward ``values`` [B] and optional named ``parts`` [B] (logged)."""

    values: np.ndarray
    parts: dict[str, np.ndarray] = {}


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
    """``R = sum_c w_c r_c`` over ``ctx.config``'s active components."""
    cfg = ctx.config
    total = np.zeros(len(ctx), np.float32)
    components, parts = {}, {}
    for name, weight in cfg.active.items():
        out = REWARD_COMPONENTS.get(name)(ctx, getattr(cfg, name, None))
        values = np.asarray(out.values, np.float32).reshape(len(ctx))
        components[name] = values
        parts.update({f"{name}_{k}": np.asarray(v, np.float32) for k, v in out.parts.items()})
        total += np.float32(weight) * values
    return Scores(total=total, components=components, parts=parts)


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
    """ReTool's outcome reward: ``correct`` if the last ``\\boxed{}`` equals the task's answer."""
    return ComponentScore(np.where(ctx.math_correct, np.float32(cfg.correct),
                                   np.float32(cfg.wrong)).astype(np.float32))


@REWARD_COMPONENTS.register("code_use")
def code_use(ctx: RewardContext, cfg: CodeUseConfig) -> ComponentScore:
    """Code-use shaping (ours, not the paper's): a bonus when a correct answer ran code, a
    penalty for the share of cells that failed."""
    counts = cell_counts(ctx.completion_texts)
    values = code_use_reward(ctx.math_correct, counts.cells, counts.failed, cfg)
    return ComponentScore(np.asarray(values), {"cells": counts.cells.astype(np.float32),
                                               "failed_cells": counts.failed.astype(np.float32)})


@REWARD_COMPONENTS.register("ftrl")
def ftrl(ctx: RewardContext, cfg: None) -> ComponentScore:
    """FTRL (arXiv 2508.08791) on built environments: per turn ``2s/(k+1)`` (s calls solving a
    still-open sub-goal, k calls), a text answer ``1/(1+#unsolved)``. Until per-turn credit
    reaches the loss, a trajectory's reward is the mean of its turn rewards; sub-goal completion
    and final-state success are logged as parts."""
    syntax = ctx.config.toolrl.syntax
    episodes = [score_task(task, trajectory_turns(ctx.trajectory, i, ctx.tokenizer, syntax))
                for i, task in enumerate(ctx.tasks)]
    values = np.array([np.mean(e.turn_rewards) if e.turn_rewards else 0.0 for e in episodes])
    success = np.array([e.success for e in episodes], np.float32)
    parts = {"success": success,
             "completion": np.array([e.completion for e in episodes], np.float32)}
    levels = np.array([str(t.meta.get("level", "")) for t in ctx.tasks])
    for level in sorted(set(levels) - {""}):  # NaN elsewhere: the logged mean is per level
        parts[f"success_{level}"] = np.where(levels == level, success, np.nan)
    return ComponentScore(values.astype(np.float32), parts)
