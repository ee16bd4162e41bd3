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
