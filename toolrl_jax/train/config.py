"""The training config: one tree whose sections are the components' own configs.

``toolrl-jax train --config configs/X.yaml key.sub=value ...`` builds a :class:`TrainConfig`
with :func:`toolrl_jax.config_io.load_config`. Each section is the config class of the component
that uses it (no second layer, no renames): ``rollout`` is the engine's
:class:`~toolrl_jax.rollout.engine.RolloutConfig`, ``algo`` the learner's
:class:`~toolrl_jax.rl.train_step.AlgoConfig`, ``optim`` its
:class:`~toolrl_jax.rl.train_step.OptimConfig`, and so on; each validates itself. Values that
depend on several sections (total optimizer steps, cache lengths, slot counts) are derived in one
place, :func:`resolve`. Unknown keys are errors naming the closest valid key; every run writes
its resolved config to ``RUN_DIR/resolved_config.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from toolrl_jax.errors import ConfigError
from toolrl_jax.models.lora import LoRAConfig
from toolrl_jax.models.sharding import MeshConfig
from toolrl_jax.rl.gae import GAEConfig
from toolrl_jax.rl.train_step import AlgoConfig, OptimConfig
from toolrl_jax.rollout.engine import RolloutConfig
from toolrl_jax.train.critic_stage import CriticConfig, needs_critic
from toolrl_jax.train.environments import EnvironmentConfig
from toolrl_jax.train.fission import FissionConfig
from toolrl_jax.train.metrics import MetricsConfig
from toolrl_jax.train.rewards import RewardConfig, check_turn_credit
from toolrl_jax.train.sft import SFTConfig
from toolrl_jax.train.sft_sources import SFT_SOURCES
from toolrl_jax.train.sources import DataConfig
from toolrl_jax.train.strategies import ROLLOUT_STRATEGIES
from toolrl_jax.train.tree import TreeConfig

_field = dataclasses.field


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The YAML ``model:`` section: which weights to load and in which dtypes.

    Attributes:
      name: a built-in alias, a local HF directory, a ``.gguf`` file or an HF hub id.
      param_dtype: dtype of the stored (master) parameters.
      dtype: compute dtype.
    """

    name: str = "smollm2-135m"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The YAML ``train:`` section: the run itself.

    Attributes:
      steps: RL steps (one rollout batch each).
      seed: seed of rollouts, the learner and SFT.
      out_dir: run directory (metrics, checkpoints, plots, summary).
      eval_every: held-out evaluation period in steps (0 = only before and after).
      eval_limit: held-out tasks per evaluation (0 = all).
      checkpoint_every: checkpoint period in steps.
      keep_checkpoints: newest checkpoints kept.
      resume: continue from the newest checkpoint in ``out_dir`` (false: start over).
      plot: write PNG plots at the end.
      rollout_shards: the step's prompts are split into this many shares, each rolled out
        with its own PRNG stream (a function of step, round and share); process ``p`` of ``P``
        takes shares ``[p*S/P, (p+1)*S/P)``. 0 = one share per process. A single process with
        ``rollout_shards=P`` reproduces a ``P``-process run exactly.
    """

    steps: int = 105
    seed: int = 0
    out_dir: str = "runs/default"
    eval_every: int = 0
    eval_limit: int = 0
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    resume: bool = True
    plot: bool = True
    rollout_shards: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "eval_limit", "rollout_shards"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The whole run: ``model, lora, mesh, data, env, rollout, reward, algo, optim, sft,
    metrics, train``, the sections of rollout strategies (``tree``, ``fission``) and the PPO
    critic (``critic``, used when ``algo.advantage.estimator`` needs values: ``gae``)."""

    model: ModelSpec = _field(default_factory=ModelSpec)
    lora: LoRAConfig = _field(default_factory=LoRAConfig)
    mesh: MeshConfig = _field(default_factory=MeshConfig)
    data: DataConfig = _field(default_factory=DataConfig)
    env: EnvironmentConfig = _field(default_factory=EnvironmentConfig)
    rollout: RolloutConfig = _field(default_factory=RolloutConfig)
    reward: RewardConfig = _field(default_factory=RewardConfig)
    algo: AlgoConfig = _field(default_factory=AlgoConfig)
    optim: OptimConfig = _field(default_factory=OptimConfig)
    sft: SFTConfig = _field(default_factory=SFTConfig)
    metrics: MetricsConfig = _field(default_factory=MetricsConfig)
    train: RunConfig = _field(default_factory=RunConfig)
    tree: TreeConfig = _field(default_factory=TreeConfig)  # rollout.strategy=tree (PORTool)
    fission: FissionConfig = _field(default_factory=FissionConfig)  # rollout.strategy=fission
    critic: CriticConfig = _field(default_factory=CriticConfig)  # estimator=gae (PPO)

    def __post_init__(self) -> None:
        ROLLOUT_STRATEGIES.get(self.rollout.strategy)
        SFT_SOURCES.get(self.sft.source)
        check_batch_geometry(self)
        check_turn_credit(self.reward, self.algo)  # turn_grpo needs a turn-scoring component
        check_critic_settings(self)
        if self.lora.enabled and needs_critic(self.algo):
            raise ConfigError("lora.enabled with algo.advantage.estimator=gae: the critic is not "
                              "built from a LoRA policy yet; use lora.enabled=false or grpo")
        if self.rollout.max_turns > 1 and not self.env.multi_turn:
            raise ConfigError(f"rollout.max_turns={self.rollout.max_turns} needs tools: set env.name "
                              "(e.g. env.name=generated_tools), or rollout.max_turns=1")

    @property
    def rows_per_step(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.samples_per_prompt


def check_batch_geometry(cfg: TrainConfig) -> None:
    """Fails fast (before anything loads) when the batch does not split as configured."""
    a = cfg.algo
    rows = cfg.rows_per_step
    if rows % a.ppo_minibatches:
        raise ConfigError(f"algo.ppo_minibatches={a.ppo_minibatches} must divide "
                          f"rollout.prompts_per_step*samples_per_prompt={rows}")
    mini = rows // a.ppo_minibatches
    if a.micro_batch_size is not None and mini % a.micro_batch_size:
        raise ConfigError(f"algo.micro_batch_size={a.micro_batch_size} must divide the PPO "
                          f"mini-batch of {mini} rows (rows / algo.ppo_minibatches)")


def check_critic_settings(cfg: TrainConfig) -> None:
    """``critic:`` and ``algo.gae`` settings only count with an estimator that uses a critic:
    setting them otherwise is an error (it would silently do nothing)."""
    if needs_critic(cfg.algo):
        if cfg.algo.pack_rows:
            raise ConfigError("algo.pack_rows: the critic's values and GAE run per row; set "
                              "algo.pack_rows=false with algo.advantage.estimator="
                              f"{cfg.algo.advantage.estimator}")
        c, rows = cfg.critic, cfg.rows_per_step
        if rows % c.minibatches(cfg.algo):
            raise ConfigError(f"critic.ppo_minibatches={c.minibatches(cfg.algo)} must divide "
                              f"rollout.prompts_per_step*samples_per_prompt={rows}")
        micro = c.micro_batch(cfg.algo)
        if micro is not None and (rows // c.minibatches(cfg.algo)) % micro:
            raise ConfigError(f"critic.micro_batch_size={micro} must divide the critic's "
                              f"mini-batch of {rows // c.minibatches(cfg.algo)} rows")
        return
    for name, value, default in (("critic", cfg.critic, CriticConfig()),
                                 ("algo.gae", cfg.algo.gae, GAEConfig())):
        if value != default:
            raise ConfigError(f"{name}: set, but algo.advantage.estimator="
                              f"{cfg.algo.advantage.estimator} uses no critic; set "
                              f"algo.advantage.estimator=gae or remove the {name} settings")


def bucket(n: int, multiple: int = 64) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, -(-n // multiple) * multiple)


def resolve(cfg: TrainConfig, *, longest_prompt: int) -> TrainConfig:
    """The config with every derived value filled in (the one place that derives them).

    * ``optim.total_steps`` (0): RL steps x PPO mini-batches (the optimizer steps of the run);
    * ``rollout.max_total_len`` (0): the longest prompt plus every turn's tokens and
      observations, rounded up to a multiple of 64 (one compiled shape per run);
    * ``rollout.num_slots``: at most the rows of one step;
    * ``critic.optim.total_steps`` (0, with a critic): RL steps x critic mini-batches x epochs.
    """
    r = cfg.rollout
    total_steps = cfg.optim.total_steps or max(cfg.train.steps * cfg.algo.ppo_minibatches,
                                               cfg.optim.warmup_steps + 1)
    obs = r.max_obs_tokens if r.max_turns > 1 else 0
    longest_turns = max(r.max_new_tokens, r.eval_max_new_tokens or 0)
    total_len = r.max_total_len or bucket(longest_prompt + r.max_turns * longest_turns
                                          + (r.max_turns - 1) * obs)
    rollout = dataclasses.replace(r, max_total_len=total_len,
                                  num_slots=max(1, min(r.num_slots, cfg.rows_per_step)))
    optim = dataclasses.replace(cfg.optim, total_steps=int(total_steps))
    c = cfg.critic
    if needs_critic(cfg.algo):
        critic_steps = c.optim.total_steps or max(
            cfg.train.steps * c.minibatches(cfg.algo) * c.ppo_epochs, c.optim.warmup_steps + 1)
        c = dataclasses.replace(c, optim=dataclasses.replace(c.optim,
                                                             total_steps=int(critic_steps)))
    return dataclasses.replace(cfg, rollout=rollout, optim=optim, critic=c)


def sft_optim(cfg: TrainConfig) -> OptimConfig:
    """The SFT optimizer: ``optim:`` with ``sft.learning_rate`` over ``sft.steps`` steps."""
    return dataclasses.replace(cfg.optim, learning_rate=cfg.sft.learning_rate,
                               total_steps=max(cfg.sft.steps, cfg.optim.warmup_steps + 1))

