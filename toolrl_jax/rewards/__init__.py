"""Rewards for tool-using LLMs: parsing and encoding on the host, pure jitted scoring on device.

ToolRL (``toolrl``: format + fine-grained tool-call correctness + length, every ablation variant,
greedy or optimal matching, a released-code compatibility preset), ReTool outcome (``math``),
OTC tool efficiency (``otc``), FTRL per-turn solve rewards (``ftrl``), DAPO overlong shaping and
the Tool-Star multi-tool bonus (``shaping``), weighted composition (``compose``).
See docs/rewards.md. Names are imported lazily. The parser of model output is ``toolrl_jax.toolcalls.parse``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # ToolRL
    "ToolRLRewardConfig": "config", "VARIANTS": "config",
    "ToolCallBatch": "encode", "encode_batch": "encode", "value_id": "encode", "canonical": "encode",
    "format_ok": "encode", "think_word_count": "encode",
    "ToolRLReward": "toolrl", "toolrl_reward": "toolrl", "toolrl_reward_core": "toolrl",
    "reward_params": "toolrl", "reward_ranges": "toolrl", "score_texts": "toolrl",
    "reference_reward": "reference",
    # other rewards
    "extract_boxed": "math", "MathVerifier": "math", "retool_reward": "math",
    "OutcomeRewardConfig": "math", "outcome_reward": "math",
    "OTCConfig": "otc", "otc_reward": "otc", "otc_tool_reward": "otc", "otc_group_min_calls": "otc",
    "ftrl_turn_counts": "ftrl", "ftrl_turn_reward": "ftrl",
    "OverlongConfig": "shaping", "dapo_overlong_penalty": "shaping", "ToolStarConfig": "shaping",
    "tool_star_reward": "shaping", "count_distinct_tools": "shaping",
    "ComposeConfig": "compose", "compose_rewards": "compose",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazy on purpose: math-verify's spawned worker processes import
    # toolrl_jax.rewards._math_worker, which runs this __init__; eager imports here would load
    # JAX into every worker. Layering is still checked: lint-imports reads the submodules.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
