"""The training config: one tree of frozen dataclasses, loaded from YAML (see ``configs/``).

``toolrl-jax train --config configs/X.yaml key.sub=value ...`` builds a :class:`TrainConfig`
with :func:`toolrl_jax.config_io.load_config`; unknown keys are errors naming the closest valid
key, and every run writes its resolved config to ``RUN_DIR/resolved_config.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

_field = dataclasses.field


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSection:
    name: str = "smollm2-135m"  # alias, local dir, .gguf file or HF hub id
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tp: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSection:
    source: Literal["generated", "toolrl_json", "toolrl_parquet", "apibank", "bfcl",
                    "bfcl_multi_turn"] = "generated"
    path: Optional[str] = None  # file (toolrl_*, apibank) or BFCL category (bfcl, bfcl_multi_turn)
    num_train: int = 256  # generated tasks (ignored for files)
    num_eval: int = 32  # held-out tasks for before/after evaluation
    seed: int = 0
    max_prompt_tokens: int = 1024  # longer prompts are skipped and counted
    prompt_style: Literal["toolrl", "compact"] = "toolrl"  # system prompt of generated tasks
    min_tools: int = 2  # generated tasks: tools listed per prompt (needed ones + distractors)
    max_tools: int = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutSection:
    mode: Literal["single_turn", "multi_turn"] = "single_turn"
    prompts_per_step: int = 512
    samples_per_prompt: int = 4
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_turns: int = 4  # multi_turn only
    max_observation_tokens: int = 512
    eval_max_new_tokens: Optional[int] = None  # default: max_new_tokens


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardSection:
    variant: str = "original"
    matching: Literal["greedy", "optimal"] = "optimal"
    compat: Optional[Literal["toolrl"]] = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgoSection:
    advantage: Literal["grpo", "dr_grpo", "rloo", "batch_norm"] = "grpo"
    std_ddof: int = 1  # released ToolRL/verl: n-1
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: Optional[float] = None
    entropy_coef: float = 0.001
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    ppo_minibatches: int = 4  # optimizer steps per rollout batch
    micro_batch_size: int = 8  # rows per micro-batch inside one optimizer step
    filter_equal_groups: bool = False  # DAPO dynamic sampling: drop all-equal groups


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimSection:
    lr: float = 1e-6
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.999


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTSection:
    steps: int = 0  # 0 = no warm start
    batch_size: int = 8
    lr: float = 1e-5
    source: Literal["generated", "toolrl_json"] = "generated"
    path: Optional[str] = None
    max_tokens: int = 2048


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSection:
    steps: int = 105
    seed: int = 0
    out_dir: str = "runs/default"
    eval_every: int = 0  # 0 = only before and after
    eval_limit: int = 0  # 0 = all held-out tasks
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    resume: bool = True
    plot: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    model: ModelSection = _field(default_factory=ModelSection)
    mesh: MeshSection = _field(default_factory=MeshSection)
    data: DataSection = _field(default_factory=DataSection)
    rollout: RolloutSection = _field(default_factory=RolloutSection)
    reward: RewardSection = _field(default_factory=RewardSection)
    algo: AlgoSection = _field(default_factory=AlgoSection)
    optim: OptimSection = _field(default_factory=OptimSection)
    sft: SFTSection = _field(default_factory=SFTSection)
    train: TrainSection = _field(default_factory=TrainSection)
