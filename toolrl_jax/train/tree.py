"""PORTool tree rollouts (``rollout.strategy: tree``, arXiv 2510.26020).

The trajectories of a prompt share their first tool-call steps. Every prompt starts with
``min(branching, G)`` independent first steps (``G = rollout.samples_per_prompt``, the leaves per
prompt); a node holding a leaf budget ``n > 1`` forks at its next tool-call boundary (after the
turn's tool result is appended) into ``min(branching, n)`` children that split the budget as
evenly as possible, up to ``tree.max_depth`` steps deep; a node with budget 1 (or past the depth)
runs to the end. A node that finishes before it could fork (an answer without a call, a length
stop) is one leaf; its remaining budget ``n - 1`` is re-sampled from its parent's prefix as
``min(branching, n - 1)`` new siblings splitting it, so every prompt ends with exactly ``G``
leaves (static batch shapes) after at most ``O(log G)`` extra levels.

How it runs: level by level on the engine. A level is one ``RolloutEngine.run`` of the pending
nodes; ``RolloutRequest.pause_at_tools`` ends a node at its first tool boundary (stop reason
``tool_boundary``) and ``RolloutRequest.max_turns`` gives it the turns left. A fork re-admits the
node's ids (prompt + steps + tool result) as the prompt of its ``k`` children, in adjacent
requests, so the engine's shared prompt prefill (``rollout.share_prompt_prefill``) prefills them
once and copies the KV rows (``Sampler.copy_rows``) to the children, each of which samples from
its own PRNG stream (``fold_in(key(seed + level), uid)``). Every shared step is decoded once; the
cost is one re-prefill of each fork's prefix (not one per child). Limits: an environment with
per-trajectory state (``executor.start(uid, task)``) starts fresh for a child, so forking is
exact for stateless tools (``generated_tools``) and approximate for stateful backends.

The batch: one row per leaf (its full path); each step's generated tokens are in the loss of
exactly one row (:func:`~toolrl_jax.rl.tree_advantages.step_owners`), with the step advantage of
:func:`~toolrl_jax.rl.tree_advantages.tree_advantages` on every token of the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from toolrl_jax.errors import ConfigError
from toolrl_jax.rl.tree_advantages import StepTree, step_owners, tree_advantages
from toolrl_jax.rollout.engine import RolloutRequest
from toolrl_jax.rollout.trajectory import Trajectory, TrajectoryRecord
from toolrl_jax.train.strategies import ROLLOUT_STRATEGIES, PromptDraw, RolloutBatch, RolloutContext

BOUNDARY = "tool_boundary"
LEVEL_SEED_STRIDE = 7_919


@dataclasses.dataclass(frozen=True, kw_only=True)
class TreeConfig:
    """The YAML ``tree:`` section (used by ``rollout.strategy: tree``).

    Attributes:
      max_depth: the deepest step (1 = forks only after the first step) after which a node
        may fork; the prompt itself always forks into the first steps.
      branching: children of a fork (and independent first steps per prompt).
      fork_weight: ``w`` of ``A = (1 - w) A_traj + w gamma^(d-1) A_fork``.
      gamma: decay of the fork-relative term with the step depth (0.95 in the paper).
      step_tool_weight: weight of "the step's tool calls succeeded" in the step reward.
    """

    max_depth: int = 2
    branching: int = 2
    fork_weight: float = 0.5
    gamma: float = 0.95
    step_tool_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.max_depth < 1:
            raise ConfigError(f"tree.max_depth must be >= 1, got {self.max_depth}")
        if self.branching < 2:
            raise ConfigError(f"tree.branching must be >= 2, got {self.branching}")
        if not 0.0 <= self.fork_weight <= 1.0:
            raise ConfigError(f"tree.fork_weight must be in [0, 1], got {self.fork_weight}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"tree.gamma must be in (0, 1], got {self.gamma}")


def split_budget(n: int, k: int) -> list[int]:
    """``n`` leaves over ``min(k, n)`` children, as evenly as possible (larger first)."""
    k = min(k, n)
    return [n // k + (1 if j < n % k else 0) for j in range(k)]


@dataclasses.dataclass
class Node:
    """One engine row of the tree: its full record (path from the prompt) and the steps it
    added (``record`` turns ``first_turn ..``)."""

    record: TrajectoryRecord
    group: int
    parent: "Node | None"
    first_turn: int
    steps: list[int] = dataclasses.field(default_factory=list)  # StepTree indices of its turns


@dataclasses.dataclass(frozen=True)
class Pending:
    """A node to roll out: from ``parent``'s ids (None: the prompt) with ``budget`` leaves."""

    parent: Node | None
    group: int
    budget: int


def merge(parent: Node | None, row: Trajectory, i: int, prompt_length: int) -> TrajectoryRecord:
    """Row ``i`` of a level run as a full record: the parent's masks, log-probs, turns and calls
    for the prefix, the row's own after it (its turns renumbered after the parent's)."""
    n = int(row.lengths[i])
    ids = row.tokens[i, :n].tolist()
    mask, logp = row.loss_mask[i, :n].tolist(), row.sample_logprobs[i, :n].tolist()
    starts = [int(s) for s in row.turn_starts[i] if s >= 0]
    ends = [int(e) for e in row.turn_ends[i] if e >= 0]
    calls = [dict(c) for c in row.tool_calls[i]]
    if parent is not None:
        p = parent.record
        cut = len(p.ids)
        mask[:cut], logp[:cut] = list(p.loss_mask), list(p.logprobs)
        offset = len(p.turn_starts)
        calls = [dict(c) for c in p.tool_calls] + [{**c, "turn": c["turn"] + offset}
                                                     for c in calls]
        starts, ends = list(p.turn_starts) + starts, list(p.turn_ends) + ends
    return TrajectoryRecord(uid=0, group_id=0, ids=ids, loss_mask=mask, logprobs=logp,
                            prompt_length=prompt_length, turn_starts=starts, turn_ends=ends,
                            tool_calls=calls, stop_reason=str(row.stop_reasons[i]))


def turn_tool_ok(record: TrajectoryRecord, turn: int) -> float:
    """1.0 when every call of ``turn`` parsed and ran (a turn without calls counts as 1)."""
    calls = [c for c in record.tool_calls if c["turn"] == turn]
    return float(all(c["ok"] for c in calls))


@dataclasses.dataclass
class TreeBuilder:
    """The steps of the trees as they grow (the arrays of a :class:`StepTree`)."""

    parent: list[int] = dataclasses.field(default_factory=list)
    group: list[int] = dataclasses.field(default_factory=list)
    tool_ok: list[float] = dataclasses.field(default_factory=list)
    leaves: list[Node] = dataclasses.field(default_factory=list)
    forks: int = 0

    def add(self, node: Node) -> None:
        """Appends the node's new turns as a chain of steps under its parent's last step."""
        above = node.parent.steps[-1] if node.parent is not None else -1
        for turn in range(node.first_turn, len(node.record.turn_starts)):
            self.parent.append(above)
            self.group.append(node.group)
            self.tool_ok.append(turn_tool_ok(node.record, turn))
            above = len(self.parent) - 1
            node.steps.append(above)

    def step_tree(self) -> StepTree:
        leaf_steps = [leaf.steps[-1] for leaf in self.leaves]
        return StepTree(parent=np.array(self.parent, np.int64), group=np.array(self.group),
                        tool_ok=np.array(self.tool_ok, np.float64),
                        leaf_step=np.array(leaf_steps, np.int64),
                        leaf_group=np.array([leaf.group for leaf in self.leaves]))


def grow(ctx: RolloutContext, prompts: Sequence[Sequence[int]], tasks: Sequence, seed: int,
         cfg: TreeConfig, leaves_per_prompt: int, max_turns: int) -> tuple[TreeBuilder, list[dict]]:
    """Rolls out the trees of ``prompts`` level by level; returns the steps, the leaves and the
    engine stats of every level."""
    tree = TreeBuilder()
    pending = [Pending(None, g, n) for g in range(len(prompts))
               for n in split_budget(leaves_per_prompt, cfg.branching)]
    level_stats: list[dict] = []
    engine = ctx.engine("train")
    while pending:
        requests = [_request(p, prompts, tasks, cfg, max_turns) for p in pending]
        out = engine.run(requests, seed=seed + LEVEL_SEED_STRIDE * len(level_stats))
        level_stats.append(out.stats)
        pending = _next_level(tree, pending, out, prompts, cfg)
    return tree, level_stats


def _depth(node: Node | None) -> int:
    return 0 if node is None else len(node.record.turn_starts)


def _request(p: Pending, prompts, tasks, cfg: TreeConfig, max_turns: int) -> RolloutRequest:
    ids = prompts[p.group] if p.parent is None else p.parent.record.ids
    depth = _depth(p.parent)
    return RolloutRequest(prompt_ids=list(ids), group_id=p.group, task=tasks[p.group],
                          max_turns=max_turns - depth,
                          pause_at_tools=p.budget > 1 and depth + 1 <= cfg.max_depth)


def _next_level(tree: TreeBuilder, pending: list[Pending], out: Trajectory, prompts,
                cfg: TreeConfig) -> list[Pending]:
    nxt: list[Pending] = []
    for i, p in enumerate(pending):
        record = merge(p.parent, out, i, len(prompts[p.group]))
        node = Node(record, p.group, p.parent, first_turn=_depth(p.parent))
        tree.add(node)
        if record.stop_reason == BOUNDARY:
            tree.forks += 1
            nxt += [Pending(node, p.group, n) for n in split_budget(p.budget, cfg.branching)]
            continue
        tree.leaves.append(node)
        if p.budget > 1:  # finished before it could fork: re-sample the rest as siblings
            nxt += [Pending(p.parent, p.group, n)
                    for n in split_budget(p.budget - 1, cfg.branching)]
    return nxt


def ownership(tree: StepTree, leaves: list[Node], width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(loss_mask [L, width] float32, step_of_token [L, width] int64, -1 = none)``: each step's
    generated tokens in its owner's row only."""
    mask = np.zeros((len(leaves), width), np.float32)
    step_of = np.full((len(leaves), width), -1, np.int64)
    owners = step_owners(tree)
    for leaf_index, leaf in enumerate(leaves):
        r = leaf.record
        node = leaf
        turn_steps: list[int] = []
        while node is not None:  # the steps of this row, from the last node up
            turn_steps = node.steps + turn_steps
            node = node.parent
        for turn, s in enumerate(turn_steps):
            if owners[s] != leaf_index:
                continue
            lo, hi = r.turn_starts[turn], r.turn_ends[turn]
            mask[leaf_index, lo:hi] = np.asarray(r.loss_mask[lo:hi], np.float32)
            step_of[leaf_index, lo:hi] = s
    return mask, step_of


def tree_metrics(tree: TreeBuilder, steps: StepTree, mask: np.ndarray,
                 traj: Trajectory, level_stats: list[dict]) -> dict[str, float]:
    """``tree/leaves``, ``tree/forks``, ``tree/shared_token_fraction`` (generated tokens a leaf
    shares with another, over all generated tokens of the rows), ``tree/steps``,
    ``tree/levels``, and the engine's prefilled / generated tokens summed over the levels."""
    row_tokens = float(np.asarray(traj.loss_mask).sum())
    owned = float(mask.sum())
    return {
        "tree/leaves": float(len(tree.leaves)),
        "tree/forks": float(tree.forks),
        "tree/steps": float(steps.num_steps),
        "tree/shared_token_fraction": 1.0 - owned / row_tokens if row_tokens else 0.0,
        "tree/levels": float(len(level_stats)),
        "tree/prefill_tokens": float(sum(s.get("prefill_tokens", 0) for s in level_stats)),
        "tree/generated_tokens": float(sum(s.get("generated_tokens", 0) for s in level_stats)),
        "tree/tool_call_steps_per_trajectory": float(np.mean(
            [len({c["turn"] for c in calls}) for calls in traj.tool_calls])),
    }


@ROLLOUT_STRATEGIES.register("tree")
def tree_strategy(ctx: RolloutContext, draw: PromptDraw) -> RolloutBatch:
    """PORTool tree rollouts of the drawn prompts: ``samples_per_prompt`` leaves each, prompt
    ``j`` is group ``j``; per-token step advantages and ownership loss mask (module docstring)."""
    cfg: TreeConfig = ctx.cfg.tree
    if ctx.cfg.algo.dynamic_sampling:
        raise ConfigError("rollout.strategy=tree does not support algo.dynamic_sampling; "
                          "set algo.dynamic_sampling=false")
    idx = [int(i) for i in draw.task_indices]
    prompts = [ctx.train_prompts[i] for i in idx]
    tasks = [ctx.train_tasks[i] for i in idx]
    tree, level_stats = grow(ctx, prompts, tasks, draw.seed, cfg, ctx.samples_per_prompt,
                             ctx.cfg.rollout.max_turns)
    order = sorted(range(len(tree.leaves)), key=lambda j: tree.leaves[j].group)  # stable
    tree.leaves = [tree.leaves[j] for j in order]
    records = [dataclasses.replace(leaf.record, uid=u, group_id=leaf.group)
               for u, leaf in enumerate(tree.leaves)]
    pad_id = getattr(ctx, "pad_id", 0)
    traj = Trajectory.from_records(records, pad_id=pad_id,
                                   pad_multiple=ctx.cfg.rollout.pad_multiple,
                                   stats=_summed_stats(level_stats))
    steps = tree.step_tree()
    mask, step_of = ownership(steps, tree.leaves, traj.tokens.shape[1])
    a = ctx.cfg.algo.advantage

    def token_advantages(rewards: np.ndarray) -> np.ndarray:
        adv = tree_advantages(steps, np.asarray(rewards, np.float64), fork_weight=cfg.fork_weight,
                              gamma=cfg.gamma, tool_weight=cfg.step_tool_weight, eps=a.eps,
                              ddof=a.std_ddof).step
        return np.where(step_of >= 0, adv[np.maximum(step_of, 0)], 0.0).astype(np.float32)

    return RolloutBatch(trajectory=traj, tasks=[tasks[leaf.group] for leaf in tree.leaves],
                        group_ids=traj.group_ids.copy(), num_groups=len(idx),
                        token_advantages=token_advantages, loss_mask=mask,
                        metrics=tree_metrics(tree, steps, mask, traj, level_stats))


def _summed_stats(level_stats: list[dict]) -> dict:
    """Numeric engine stats summed over the levels (rates are recomputed where they matter)."""
    out: dict = {}
    for s in level_stats:
        for k, v in s.items():
            if isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
    wall = out.get("wall_s", 0.0)
    out["tokens_per_s"] = out.get("generated_tokens", 0) / wall if wall else 0.0
    out["slot_utilisation"] = float(np.mean([s.get("slot_utilisation", 0.0)
                                             for s in level_stats]))
    return out
