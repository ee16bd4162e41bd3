"""FTRL-style automatically built tool environments (arXiv 2508.08791), deterministic builder.

    spec.py      YAML scenario specs (domain, entities, typed fields, operations), validated with
                 file:line errors
    world.py     tool documents, the seeded per-trajectory world (one method per tool), the
                 executor's ToolEnvironment
    episode.py   sub-goals and guards, replay of an episode, FTRL per-turn rewards, success
    builder.py   tasks by complexity level, verification by execution, build / check directories
    training.py  load_env_tasks, env_for_tasks, replay inputs from trajectories, score_task

Format and usage: docs/envgen.md. CLI: ``toolrl-jax envs build|check``.
"""

from toolrl_jax.envgen.builder import (
    LEVELS, BuildOptions, BuildResult, BuiltTask, build_env_dir, build_tasks, check_env_dir, read_env_dir,
)
from toolrl_jax.envgen.episode import (
    EpisodeScore, Guard, SubGoal, TurnInput, TurnRecord, ftrl_turn_rewards, replay, score_episode,
)
from toolrl_jax.envgen.spec import DomainSpec, load_spec, loads_spec
from toolrl_jax.envgen.training import (
    env_for_tasks, ftrl_turn_rewards_for, load_env_tasks, score_task, text_turns, trajectory_turns,
)
from toolrl_jax.envgen.world import EnvgenEnvironment, World, make_world, tool_documents

__all__ = [
    "LEVELS", "BuildOptions", "BuildResult", "BuiltTask", "DomainSpec", "EnvgenEnvironment", "EpisodeScore",
    "Guard", "SubGoal", "TurnInput", "TurnRecord", "World", "build_env_dir", "build_tasks", "check_env_dir",
    "env_for_tasks", "ftrl_turn_rewards", "ftrl_turn_rewards_for", "load_env_tasks", "load_spec", "loads_spec",
    "make_world", "read_env_dir", "replay", "score_episode", "score_task", "text_turns", "tool_documents",
    "trajectory_turns",
]
