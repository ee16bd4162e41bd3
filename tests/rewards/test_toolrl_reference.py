"""The jitted ToolRL reward against the plain-Python reference of the released code.

* docs/methods.md section 1 worked examples (hand-computed numbers) for the compat preset.
* >= 500 cases generated from the real ToolRL data, every variant, steps 0/15/30/60/105:
  jitted == reference to 1e-6 on all four components.
* optimal matching >= greedy on every case, strictly more on a constructed case.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from toolrl_jax.rewards.config import VARIANTS, ToolRLRewardConfig
from toolrl_jax.rewards.encode import encode_batch
from toolrl_jax.rewards.reference import reference_reward
from toolrl_jax.rewards.toolrl import toolrl_reward

from ._cases import generate_cases, greedy_fooling_case

STEPS = (0, 15, 30, 60, 105)
FIELDS = ("total", "format", "correctness", "length")


def ref_kwargs(cfg: ToolRLRewardConfig) -> dict:
    return dict(variant=cfg.variant, matching=cfg.matching, equality=cfg.equality,
                released_quirks=cfg.released_quirks, response_only=cfg.response_only,
                format_range=cfg.format_range, correctness_range=cfg.correctness_range,
                length_words=cfg.length_words, length_schedule=cfg.length_schedule,
                dynamic_code_steps=cfg.dynamic_code_steps, total_steps=cfg.total_steps,
                two_stage_step=cfg.two_stage_step)


@pytest.fixture(scope="module")
def cases(shared_data):
    out = generate_cases(n=600, seed=0, data_dir=shared_data / "toolrl")
    assert len(out) >= 500
    return out


def _jitted(cases, cfg, step):
    """Jitted scores; the batch is padded to a bucket (8 or a multiple of 256) so that the
    whole file compiles a handful of programs (shape x matching), not one per test."""
    n = len(cases)
    size = 8 if n <= 8 else -(-n // 256) * 256
    padded = list(cases) + [cases[0]] * (size - n)
    batch = encode_batch([c for c, _ in padded], [g for _, g in padded], cfg)
    out = toolrl_reward(batch, jnp.int32(step), cfg)
    return np.stack([np.asarray(getattr(out, f), np.float64)[:n] for f in FIELDS], axis=1)


def _reference(cases, cfg, step):
    kw = ref_kwargs(cfg)
    return np.array([reference_reward(c, g, step, **kw) for c, g in cases], np.float64)


def _assert_agree(cases, cfg, step):
    got, want = _jitted(cases, cfg, step), _reference(cases, cfg, step)
    bad = np.nonzero(np.abs(got - want).max(axis=1) > 1e-6)[0]
    if len(bad):
        i = bad[0]
        pytest.fail(f"{len(bad)} mismatches for {cfg.variant}/{cfg.matching} step {step}; first: "
                    f"got {got[i]}, reference {want[i]}\ncompletion={cases[i][0]!r}\nground_truth={cases[i][1]!r}")


# ------------------------------------------------------------------------ worked examples
A = {"name": "A", "parameters": {"x": "1", "y": "2"}}
B = {"name": "B", "parameters": {"z": 3}}


def _comp(calls, think=True):
    head = "<think> I will call the tools. </think>\n" if think else ""
    return head + "<tool_call>\n" + "\n".join(json.dumps(c) for c in calls) + "\n</tool_call>"


WORKED = [  # (completion, total, format, correctness) from docs/methods.md section 1
    (_comp([A, B]), 4, 1, 3),
    (_comp([B, A]), 4, 1, 3),
    (_comp([{"name": "A", "parameters": {"x": "1", "y": "9"}}]), 0.5, 1, -0.5),
    (_comp([{"name": "A", "parameters": {"x": 1, "y": "2"}}, {"name": "B", "parameters": {"z": "3"}}]), 2, 1, 1),
    (_comp([A, B, {"name": "C", "parameters": {}}]), 1 + 8 / 3, 1, 8 / 3),
    (_comp([A, B], think=False), 3, 0, 3),
    ("<think> I will call the tools. </think>\n<tool_call>\n" + json.dumps(A, indent=2) + "\n"
     + json.dumps(B, indent=2) + "\n</tool_call>", -2, 1, -3),
    ("<think> I will call the tools. </think>\n<response> Done. </response>", -3, 0, -3),
]


@pytest.mark.parametrize("matching", ["greedy", "optimal"])
def test_worked_examples(matching):
    cfg = ToolRLRewardConfig.compat_toolrl(matching=matching)
    gt = _comp([A, B])
    out = _jitted([(c, gt) for c, *_ in WORKED], cfg, 0)
    want = np.array([w for _, *w in WORKED], np.float64)
    np.testing.assert_allclose(out[:, :3], want, atol=1e-6)
    np.testing.assert_allclose(out[:, 3], 0.0)
    # and the reference agrees with the hand-computed numbers too
    ref = _reference([(c, gt) for c, *_ in WORKED], cfg, 0)
    np.testing.assert_allclose(ref[:, :3], want, atol=1e-9)


# ------------------------------------------------------------------------ generated cases
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compat_matches_reference_every_variant(cases, variant):
    cfg = ToolRLRewardConfig.compat_toolrl(variant)
    for step in STEPS:
        _assert_agree(cases, cfg, step)


@pytest.mark.parametrize("variant,equality", [("original", "strict"), ("finegrained", "strict"),
                                              ("intermediate", "strict"), ("dynamic", "strict"),
                                              ("original", "lenient")])
def test_default_mode_matches_reference(cases, variant, equality):
    """Paper-intent settings: optimal matching, strict call schema, 'no_call' response-only rule."""
    cfg = ToolRLRewardConfig(variant=variant, equality=equality)
    assert cfg.matching == "optimal" and not cfg.released_quirks
    for step in (0, 60):
        _assert_agree(cases, cfg, step)


def test_cases_cover_the_interesting_branches(cases):
    cfg = ToolRLRewardConfig.compat_toolrl()
    ref = _reference(cases, cfg, 0)
    corr = ref[:, 2]
    assert (corr == 3).sum() > 20            # exact matches
    assert (corr == -3).sum() > 20           # parse failures
    assert ((corr > -3) & (corr < 3)).sum() > 150  # partial credit
    assert (corr == 0).sum() > 10            # response-only ground truths
    assert (ref[:, 1] == 0).sum() > 30 and (ref[:, 1] == 1).sum() > 300


# ------------------------------------------------------------------------ optimal vs greedy
def test_optimal_never_below_greedy(cases):
    for variant in ("original", "finegrained", "intermediate"):
        g = _jitted(cases, ToolRLRewardConfig.compat_toolrl(variant), 0)[:, 2]
        o = _jitted(cases, ToolRLRewardConfig.compat_toolrl(variant, matching="optimal"), 0)[:, 2]
        assert np.all(o >= g - 1e-6), variant
        if variant == "original":  # the generated same-name cases fool greedy some of the time
            assert np.sum(o > g + 1e-6) >= 5


def test_optimal_strictly_better_when_greedy_is_fooled():
    comp, gt = greedy_fooling_case()
    g = _jitted([(comp, gt)], ToolRLRewardConfig.compat_toolrl(), 0)[0, 2]
    o = _jitted([(comp, gt)], ToolRLRewardConfig.compat_toolrl(matching="optimal"), 0)[0, 2]
    # hand-computed: S_max = 6; greedy score 1 + 1.5 + 4/3, optimal 1 + 1.5 + 3
    np.testing.assert_allclose(g, 6 * (1 + 1.5 + 4 / 3) / 6 - 3, atol=1e-6)
    np.testing.assert_allclose(o, 6 * (1 + 1.5 + 3) / 6 - 3, atol=1e-6)
    assert o > g + 1.0


def test_large_max_calls_fallback_not_below_greedy():
    """max_calls > 10 uses max(greedy in order, best-pair-first): never below greedy."""
    cfg_o = ToolRLRewardConfig.compat_toolrl(matching="optimal", max_calls=12)
    sample = [greedy_fooling_case()] + generate_cases(n=120, seed=3)
    o = _jitted(sample, cfg_o, 0)[:, 2]
    np.testing.assert_allclose(o[0], 2.5, atol=1e-6)  # best-pair-first finds the optimum here
    g = _reference(sample, ToolRLRewardConfig.compat_toolrl(), 0)[:, 2]
    best = _reference(sample, cfg_o, 0)[:, 2]
    assert np.all(o >= g - 1e-6) and np.all(o <= best + 1e-6)
