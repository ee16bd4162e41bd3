"""Step rewards and fork-relative advantages of tree rollouts (PORTool, arXiv 2510.26020).

A prompt's rollouts form a tree of **steps**: a step is one assistant turn plus its tool result.
Every prompt has a virtual root (the prompt itself); its children are the first steps. A
**fork** is a node with several children; the leaves are finished trajectories with an outcome
reward ``R_l`` (the trainer's total reward of that row). With ``leaves(s)`` the leaves below
step ``s`` (a leaf is below its own last step and every step on its path)::

    step reward        r_s       = mean_{l in leaves(s)} R_l  +  tool_weight * ok_s
    fork-relative      A^fork_s  = (r_s - mean_{u in sib(s)} r_u) / (std_{u in sib(s)} r_u + eps)
                                   (0 when s has no sibling)
    trajectory (GRPO)  A^traj_l  = (R_l - mean_G R) / (std_G R + eps)   over the G leaves of
                                   the prompt;  A^traj_s = mean_{l in leaves(s)} A^traj_l
    blended            A_s       = (1 - w) * A^traj_s + w * gamma^(d_s - 1) * A^fork_s

``ok_s`` in [0, 1] is whether the step's tool calls parsed and executed (1 for a step without
calls, e.g. the final answer); ``sib(s)`` are the children of ``s``'s parent (for a first step:
the prompt's first steps); ``d_s`` is the step's depth (first steps: 1); ``w`` is
``tree.fork_weight`` and ``gamma`` ``tree.gamma`` (0.95 in the paper). Every generated token of
step ``s`` gets ``A_s``; a step shared by several leaves is trained once (one row owns it).

Where the paper is not explicit, these are this module's choices: the mix of outcome and
tool success is additive with weight ``tool_weight``; the trajectory term of a shared step is
the mean of its leaves' GRPO advantages; the decay multiplies the fork-relative term of deeper
steps (``gamma^(d-1)``), so late forks move the policy less than early ones; standard deviations
use ``ddof`` (like ``algo.advantage.std_ddof``).

Host-side numpy (trees are small and ragged); every function is pure.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class StepTree:
    """The steps of a batch of trees (several prompts).

    Attributes:
      parent: ``[N]`` int, parent step of each step; -1 for a first step (child of the prompt).
      group: ``[N]`` int, the prompt (group) of each step.
      tool_ok: ``[N]`` float in [0, 1], the step's tool calls succeeded.
      leaf_step: ``[L]`` int, the last step of each leaf (finished trajectory).
      leaf_group: ``[L]`` int, the prompt of each leaf.
    """

    parent: np.ndarray
    group: np.ndarray
    tool_ok: np.ndarray
    leaf_step: np.ndarray
    leaf_group: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(len(self.parent))


def step_depths(parent: np.ndarray) -> np.ndarray:
    """``[N]`` depth of each step (first steps 1); parents must come before their children."""
    depth = np.zeros(len(parent), np.int64)
    for n, p in enumerate(parent):
        if p >= n:
            raise ValueError(f"step {n}: parent {p} must precede it")
        depth[n] = 1 if p < 0 else depth[p] + 1
    return depth


def leaf_paths(tree: StepTree) -> np.ndarray:
    """``[N, L]`` bool: step ``n`` lies on the path of leaf ``l`` (``n`` is above or is its last
    step)."""
    on = np.zeros((tree.num_steps, len(tree.leaf_step)), bool)
    for l, n in enumerate(tree.leaf_step):
        while n >= 0:
            on[n, l] = True
            n = tree.parent[n]
    return on


def _normalise(values: np.ndarray, ids: np.ndarray, eps: float, ddof: int) -> np.ndarray:
    """``(v - mean) / (std + eps)`` within each id; 0 for an id with one member."""
    out = np.zeros(len(values), np.float64)
    for g in np.unique(ids):
        rows = ids == g
        if rows.sum() < 2:
            continue
        v = values[rows]
        out[rows] = (v - v.mean()) / (v.std(ddof=ddof) + eps)
    return out


def step_rewards(tree: StepTree, outcomes: np.ndarray, tool_weight: float) -> np.ndarray:
    """``[N]`` ``r_s = mean_{l in leaves(s)} R_l + tool_weight * ok_s`` (module docstring)."""
    on = leaf_paths(tree)
    counts = on.sum(1)
    if np.any(counts == 0):
        raise ValueError("every step needs a leaf below it")
    mean_outcome = (on * np.asarray(outcomes, np.float64)[None]).sum(1) / counts
    return mean_outcome + tool_weight * np.asarray(tree.tool_ok, np.float64)


def sibling_ids(tree: StepTree) -> np.ndarray:
    """``[N]`` an id shared by exactly the steps with the same parent (first steps: per prompt)."""
    n = tree.num_steps
    return np.where(tree.parent >= 0, tree.parent, n + np.asarray(tree.group))


def fork_advantages(tree: StepTree, rewards: np.ndarray, *, eps: float = 1e-6,
                    ddof: int = 0) -> np.ndarray:
    """``[N]`` step reward normalised among its siblings (0 for an only child)."""
    return _normalise(np.asarray(rewards, np.float64), sibling_ids(tree), eps, ddof)


def trajectory_advantages(outcomes: np.ndarray, leaf_group: np.ndarray, *, eps: float = 1e-6,
                          ddof: int = 0) -> np.ndarray:
    """``[L]`` GRPO advantages of the leaves within their prompt."""
    return _normalise(np.asarray(outcomes, np.float64), np.asarray(leaf_group), eps, ddof)


@dataclasses.dataclass(frozen=True)
class TreeAdvantages:
    """Everything :func:`tree_advantages` derives: ``[N]`` per step and ``[L]`` per leaf."""

    step_reward: np.ndarray
    fork: np.ndarray
    trajectory_leaf: np.ndarray
    trajectory_step: np.ndarray
    depth: np.ndarray
    step: np.ndarray  # the blended A_s


def tree_advantages(tree: StepTree, outcomes: np.ndarray, *, fork_weight: float, gamma: float,
                    tool_weight: float = 0.0, eps: float = 1e-6, ddof: int = 0) -> TreeAdvantages:
    """``A_s = (1 - w) A^traj_s + w gamma^(d_s - 1) A^fork_s`` for every step (module docstring)."""
    rewards = step_rewards(tree, outcomes, tool_weight)
    fork = fork_advantages(tree, rewards, eps=eps, ddof=ddof)
    traj_leaf = trajectory_advantages(outcomes, tree.leaf_group, eps=eps, ddof=ddof)
    on = leaf_paths(tree)
    traj_step = (on * traj_leaf[None]).sum(1) / on.sum(1)
    depth = step_depths(tree.parent)
    blended = (1.0 - fork_weight) * traj_step + fork_weight * gamma ** (depth - 1) * fork
    return TreeAdvantages(step_reward=rewards, fork=fork, trajectory_leaf=traj_leaf,
                          trajectory_step=traj_step, depth=depth, step=blended)


def step_owners(tree: StepTree) -> np.ndarray:
    """``[N]`` the leaf (row) that trains each step: the first leaf below it, so a shared step's
    tokens are in the loss exactly once."""
    on = leaf_paths(tree)
    return np.argmax(on, axis=1)
