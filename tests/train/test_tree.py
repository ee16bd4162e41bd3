"""PORTool tree rollouts: step advantages against a plain-Python reference, the tree strategy's
prefix sharing on a scripted policy, and one tiny trainer step."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from toolrl_jax.rl.tree_advantages import StepTree, step_owners, tree_advantages

# ----------------------------------------------------------------------------- reference
# A tree is written as nested tuples: (tool_ok, [children]) for a step, a float for a leaf's
# outcome (a step whose children list holds one float is that leaf's last step).


def _flatten(prompts):
    """Hand-built trees -> StepTree plus a per-step description for the reference."""
    parent, group, ok, leaf_step, leaf_group, outcomes, nodes = [], [], [], [], [], [], []

    def visit(node, p, g):
        idx = len(parent)
        parent.append(p)
        group.append(g)
        ok.append(node[0])
        nodes.append(node)
        for child in node[1]:
            if isinstance(child, float):
                leaf_step.append(idx)
                leaf_group.append(g)
                outcomes.append(child)
            else:
                visit(child, idx, g)

    for g, first_steps in enumerate(prompts):
        for s in first_steps:
            visit(s, -1, g)
    tree = StepTree(np.array(parent), np.array(group), np.array(ok, float), np.array(leaf_step),
                    np.array(leaf_group))
    return tree, np.array(outcomes), nodes


def _leaf_values(node):
    out = []
    for c in node[1]:
        out += [c] if isinstance(c, float) else _leaf_values(c)
    return out


def _zscore(x, xs, eps):
    if len(xs) < 2:
        return 0.0
    return (x - statistics.fmean(xs)) / (statistics.pstdev(xs) + eps)


def _reference(prompts, *, w, gamma, tool_weight, eps=1e-6):
    """Plain recursion over the nested trees, in the same pre-order as _flatten."""
    out = []
    for first_steps in prompts:
        group_leaves = [v for s in first_steps for v in _leaf_values(s)]

        def reward(node):
            vals = _leaf_values(node)
            return sum(vals) / len(vals) + tool_weight * node[0]

        def visit(node, siblings, depth):
            sib_r = [reward(s) for s in siblings]
            fork = _zscore(reward(node), sib_r, eps)
            leaves = _leaf_values(node)
            traj = sum(_zscore(v, group_leaves, eps) for v in leaves) / len(leaves)
            out.append((1 - w) * traj + w * gamma ** (depth - 1) * fork)
            kids = [c for c in node[1] if not isinstance(c, float)]
            for c in kids:
                visit(c, kids, depth + 1)

        for s in first_steps:
            visit(s, first_steps, 1)
    return out


TREES = [
    # prompt 0: unequal depths, a fork with one child, a one-step leaf
    [(1.0, [(1.0, [(0.0, [1.0]), (1.0, [0.0])]), (1.0, [(1.0, [(1.0, [1.0])])])]),
     (0.0, [0.0])],
    # prompt 1: an all-correct subtree next to an all-wrong one
    [(1.0, [(1.0, [1.0]), (1.0, [1.0])]), (0.0, [(0.0, [0.0]), (1.0, [0.0])])],
    # prompt 2: one first step that forks three ways, all wrong (constant rewards)
    [(1.0, [(0.0, [0.0]), (0.0, [0.0]), (0.0, [0.0])])],
]


@pytest.mark.parametrize("w, gamma, tool_weight", [(0.5, 0.95, 0.0), (0.3, 0.9, 0.2),
                                                   (1.0, 0.95, 0.5), (0.0, 0.95, 0.5)])
def test_tree_advantages_equal_the_reference(w, gamma, tool_weight):
    tree, outcomes, _ = _flatten(TREES)
    got = tree_advantages(tree, outcomes, fork_weight=w, gamma=gamma, tool_weight=tool_weight)
    want = _reference(TREES, w=w, gamma=gamma, tool_weight=tool_weight)
    np.testing.assert_allclose(got.step, want, rtol=1e-9, atol=1e-9)


def test_tree_advantage_special_cases():
    tree, outcomes, nodes = _flatten(TREES)
    adv = tree_advantages(tree, outcomes, fork_weight=0.5, gamma=0.95, tool_weight=0.0)
    # the only child of a fork has no fork-relative signal
    only = [i for i, n in enumerate(nodes) if n[0] == 1.0 and n[1] == [1.0] and tree.parent[i] >= 0
            and sum(tree.parent == tree.parent[i]) == 1]
    assert only and all(adv.fork[i] == 0.0 for i in only)
    # prompt 2: every leaf wrong -> every advantage 0
    assert np.all(adv.step[tree.group == 2] == 0.0)
    # prompt 1: the all-correct subtree's first step is above its all-wrong sibling
    first = np.flatnonzero((tree.group == 1) & (tree.parent < 0))
    assert adv.fork[first[0]] > 0 > adv.fork[first[1]]
    assert adv.depth.max() == 4  # prompt 0: the deepest leaf ends at step 4


def test_each_step_is_owned_by_one_leaf_below_it():
    tree, _, _ = _flatten(TREES)
    owners = step_owners(tree)
    for n, l in enumerate(owners):
        m = tree.leaf_step[l]  # walk up from the owner's last step: n must be on its path
        path = []
        while m >= 0:
            path.append(m)
            m = tree.parent[m]
        assert n in path


# ----------------------------------------------------------------------------- scripted rollout
def _shared_prefill(prefixes):
    """Prefill tokens of one level under shared prompt prefill: each distinct prefix once (all
    but its last token), then the last token once per request."""
    return sum(len(p) - 1 for p in {tuple(p) for p in prefixes}) + len(prefixes)


def test_scripted_tree_shares_every_prefix_step_exactly_once():
    from tests.train import _scripted as S
    from toolrl_jax.train.tree import TreeConfig, tree_strategy
    from toolrl_jax.train.strategies import PromptDraw

    deep, direct = [1, 3, 4], [1, 3, 5]
    turn1, obs1 = [10, S.TOOL_END], S.observation(2)
    turn2, obs2 = [13, S.TOOL_END], S.observation(1)
    final = [12, S.EOS]
    scripts = {}
    S.add_script(scripts, deep, turn1)
    S.add_script(scripts, deep + turn1 + obs1, turn2)
    S.add_script(scripts, deep + turn1 + obs1 + turn2 + obs2, final)
    S.add_script(scripts, direct, final)  # answers at once: never forks
    g = 8
    ctx = S.context(scripts, [deep, direct], samples=g, max_turns=3, num_slots=16,
                    tree=TreeConfig(max_depth=2, branching=2, fork_weight=0.5))
    batch = tree_strategy(ctx, PromptDraw(np.array([0, 1]), seed=0))
    traj = batch.trajectory

    # every prompt ends with exactly G leaves; deep leaves are the whole scripted path
    assert np.bincount(batch.group_ids).tolist() == [g, g]
    full = deep + turn1 + obs1 + turn2 + obs2 + final
    for i in np.flatnonzero(batch.group_ids == 0):
        assert traj.tokens[i, : traj.lengths[i]].tolist() == full
        assert traj.loss_mask[i, : traj.lengths[i]].tolist() == (
            [0] * 3 + [1, 1] + [0] * 3 + [1, 1] + [0] * 2 + [1, 1])
    for i in np.flatnonzero(batch.group_ids == 1):
        assert traj.tokens[i, : traj.lengths[i]].tolist() == direct + final

    # deep prompt: 2 first steps (budget 4 each) -> 4 children (2 each) -> 8 leaves.
    # direct prompt: 2 roots (budget 4 each) finish at once; each re-samples its other 3 leaves
    # as 2 new roots (budgets 2 and 1), and the budget-2 ones once more: 2 + 4 + 2 leaves.
    unique_deep = 2 * 2 + 4 * 2 + 8 * 2  # decoded once per step
    m = batch.metrics
    assert m["tree/leaves"] == 2 * g and m["tree/forks"] == 2 + 4
    assert m["tree/generated_tokens"] == unique_deep + g * 2
    assert batch.loss_mask.sum() == unique_deep + g * 2  # each step's tokens owned once
    p1 = deep + turn1 + obs1
    p2 = p1 + turn2 + obs2
    expected_prefill = (_shared_prefill([deep] * 2 + [direct] * 2)  # level 0
                        + _shared_prefill([p1] * 4 + [direct] * 4)  # level 1
                        + _shared_prefill([p2] * 8 + [direct] * 2))  # level 2
    assert m["tree/prefill_tokens"] == expected_prefill
    assert m["tree/levels"] == 3
    # rows own disjoint steps: every deep step's tokens appear in exactly one row's mask
    deep_rows = batch.loss_mask[batch.group_ids == 0]
    assert deep_rows[:, 3:5].sum() == 2 * 2 and deep_rows[:, 8:10].sum() == 4 * 2
    assert deep_rows[:, 12:14].sum() == 8 * 2

    # per-token advantages: all leaves of a prompt are equal here, so everything is 0; a reward
    # vector with a better leaf gives its own final step a positive advantage
    rewards = np.zeros(2 * g)
    assert np.all(batch.token_advantages(rewards) == 0)
    rewards[0] = 1.0
    adv = batch.token_advantages(rewards)
    assert adv.shape == traj.tokens.shape
    assert adv[0, 12] > 0 and np.all(adv[batch.loss_mask == 0] == 0)


# ----------------------------------------------------------------------------- tiny trainer
@pytest.mark.slow
def test_tree_strategy_one_trainer_step(tiny_model_dir, tmp_path):
    import math

    from tests.train.test_composable import _one_step, _overrides
    from toolrl_jax.config_io import load_config
    from toolrl_jax.train.config import TrainConfig

    cfg = load_config(TrainConfig, None, _overrides(
        tiny_model_dir, tmp_path, "rollout.strategy=tree", "env.name=generated_tools",
        "rollout.max_turns=2", "rollout.max_obs_tokens=16", "rollout.samples_per_prompt=4",
        "tree.branching=2", "tree.max_depth=1"))
    _, m = _one_step(cfg)
    assert m["tree/leaves"] == 2 * 4 and math.isfinite(m["loss"])
    assert 0.0 <= m["tree/shared_token_fraction"] < 1.0
    assert "tree/tool_call_steps_per_trajectory" in m and "accuracy" in m
