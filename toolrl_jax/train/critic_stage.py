"""PPO's critic in the trainer: rollout-time values, GAE, the critic's update and its state.

Built only when the advantage estimator reads critic values (``algo.advantage.estimator: gae``,
a :class:`~toolrl_jax.rl.advantages.TokenEstimator` with ``needs_values``). One RL step then is::

    collect -> make_batch -> log-probs (old, and reference for the KL in the reward)
      values   V_old = critic(tokens) on the whole rollout batch          [B, T]
      credit   r = R on the last action - beta KL;  A, R_ret = GAE(r, V_old)  (rl/gae.py)
      policy   Learner.ppo_update with the per-token A (skipped while step < critic.warmup_steps)
      critic   same mini-batches, clipped value loss
               L_V = 0.5 mean_m max((V - R_ret)^2, (clip(V, V_old +- c) - R_ret)^2)

The critic (:class:`~toolrl_jax.models.value_head.ValueModel`) starts from the policy's weights at
the start of RL (``critic.init: policy``, after an SFT warm start if any) or from a Hugging Face
directory, with a zero value head. It has its own AdamW (:class:`CriticOptimConfig`, verl's
critic lr 1e-5). Its params, optimizer state and step counter are :class:`CriticState`; the run's
state is then :class:`ActorCriticState` (policy + critic), one pytree that the checkpoint saves
whole, so a resumed run continues bit for bit.

Metrics (``critic/``): from the update (mean over mini-batches) ``vf_loss``, ``vf_clip_frac``,
``vf_explained_var`` (of the returns by the values before each step), ``grad_norm``; from the
rollout batch ``explained_variance`` (of the returns by the rollout-time values), ``values_mean``,
``returns_mean``, ``advantages_mean`` / ``advantages_std`` (after whitening, what the policy
uses), and ``warmup`` (1 on critic-only steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from toolrl_jax.errors import ConfigError
from toolrl_jax.models.value_head import ValueModel, value_model_shardings
from toolrl_jax.rl.advantages import ESTIMATORS, CreditInputs, TokenEstimator
from toolrl_jax.rl.critic import make_critic_update, make_values_fn, split_value_model
from toolrl_jax.rl.gae import GAEOutput, gae_from_credit, gae_metrics, masked_var
from toolrl_jax.rl.train_step import AlgoConfig, OptimConfig, TrainState, make_optimizer

_field = dataclasses.field


@dataclasses.dataclass(frozen=True, kw_only=True)
class CriticOptimConfig(OptimConfig):
    """The critic's AdamW (``critic.optim``): :class:`OptimConfig` with verl's critic learning
    rate 1e-5 as the default (``total_steps`` 0 is derived: RL steps x critic mini-batches)."""

    learning_rate: float = 1e-5


@dataclasses.dataclass(frozen=True, kw_only=True)
class CriticConfig:
    """The YAML ``critic:`` section (PPO with a learned critic; used by ``estimator: gae``).

    Attributes:
      init: ``policy`` (a copy of the policy's weights when RL starts) or a local Hugging Face
        directory of the same tokenizer (e.g. a reward or SFT model); the value head starts at 0.
      optim: the critic's optimizer (:class:`CriticOptimConfig`, lr 1e-5).
      warmup_steps: RL steps at the start that update only the critic (verl
        ``trainer.critic_warmup``); the policy updates begin at step ``warmup_steps + 1``.
      ppo_minibatches: critic optimizer steps per rollout batch, each on ``rows / n``
        consecutive rows (null = ``algo.ppo_minibatches``, the policy's mini-batches).
      ppo_epochs: passes of those mini-batches per rollout batch (verl ``critic.ppo_epochs``).
      micro_batch_size: rows per gradient-accumulation micro-batch of the critic (verl
        ``critic.ppo_micro_batch_size``; null = ``algo.micro_batch_size``); must divide the
        critic's mini-batch.
    """

    init: str = "policy"
    optim: CriticOptimConfig = _field(default_factory=CriticOptimConfig)
    warmup_steps: int = 0
    ppo_minibatches: int | None = None
    ppo_epochs: int = 1
    micro_batch_size: int | None = None

    def __post_init__(self) -> None:
        if not self.init:
            raise ConfigError("critic.init: give 'policy' or a Hugging Face model directory")
        if self.warmup_steps < 0:
            raise ConfigError(f"critic.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.ppo_minibatches is not None and self.ppo_minibatches < 1:
            raise ConfigError(f"critic.ppo_minibatches: must be >= 1 or null, got "
                              f"{self.ppo_minibatches}")
        if self.ppo_epochs < 1:
            raise ConfigError(f"critic.ppo_epochs: must be >= 1, got {self.ppo_epochs}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"critic.micro_batch_size: must be >= 1 or null, got "
                              f"{self.micro_batch_size}")

    def minibatches(self, algo: AlgoConfig) -> int:
        return self.ppo_minibatches or algo.ppo_minibatches

    def micro_batch(self, algo: AlgoConfig) -> int | None:
        return self.micro_batch_size or algo.micro_batch_size


def needs_critic(algo: AlgoConfig) -> bool:
    """The configured estimator reads critic values (a critic must be built and trained)."""
    estimator = ESTIMATORS.get(algo.advantage.estimator)
    return isinstance(estimator, TokenEstimator) and estimator.needs_values


@flax.struct.dataclass
class CriticState:
    """The critic's mutable state: params (pure dict), optax state, optimizer steps taken."""

    params: Any
    opt_state: Any
    step: jax.Array


@flax.struct.dataclass
class ActorCriticState:
    """The run's state with a critic: the policy's :class:`TrainState` and the critic's."""

    policy: TrainState
    critic: CriticState


@dataclasses.dataclass(frozen=True)
class Credit:
    """GAE of one rollout batch: ``[B, T]`` advantages / returns and rollout-time values (on
    device, padded to the batch length) and the batch-level metrics."""

    advantages: Any
    returns: Any
    values: Any
    metrics: dict


@jax.jit
def _credit_metrics(out: GAEOutput, values: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """The rollout batch's critic metrics, one compiled program per ``[B, T]`` bucket (run
    eagerly, each masked mean / variance was a handful of one-op programs compiled again for
    every new response length: 0.75 s of each PPO step of the tiny test model)."""
    m = gae_metrics(out, values, mask)
    return {"explained_variance": m["explained_variance"], "values_mean": m["value_mean"],
            "returns_mean": m["return_mean"], "advantages_mean": m["advantage_mean"],
            "advantages_std": jnp.sqrt(masked_var(out.advantages, mask))}


class CriticStage:
    """Builds, applies and updates the critic (module docstring). Pure-function core in
    :mod:`toolrl_jax.rl.critic` / :mod:`toolrl_jax.rl.gae`; this class holds the compiled
    functions, the mesh placement and the mini-batch loop."""

    def __init__(self, graphdef: Any, model_config: Any, cfg: CriticConfig, algo: AlgoConfig,
                 *, mesh: Mesh | None = None):
        self.cfg, self.algo, self.mesh = cfg, algo, mesh
        self.graphdef, self.model_config = graphdef, model_config
        self.optimizer = make_optimizer(cfg.optim)
        self._update = make_critic_update(graphdef, self.optimizer, vf_clip=algo.gae.vf_clip,
                                          micro_batch_size=cfg.micro_batch(algo), mesh=mesh)
        self._values = make_values_fn(graphdef)
        kw = {} if mesh is None else {"out_shardings": NamedSharding(mesh, P(("data", "fsdp")))}
        self._slice = jax.jit(lambda b, s, n: jax.tree.map(
            lambda x: jax.lax.dynamic_slice_in_dim(x, s, n, axis=0), b), static_argnums=(2,), **kw)

    @classmethod
    def build(cls, policy: Any, cfg: Any, *, mesh: Mesh | None = None
              ) -> tuple["CriticStage", Any]:
        """``(stage, initial critic params)`` for a :class:`~toolrl_jax.train.config.TrainConfig`
        ``cfg``; ``policy`` is the policy :class:`~toolrl_jax.models.decoder.Decoder`."""
        c = cfg.critic
        if c.init == "policy":
            model = ValueModel.from_policy(policy)
        else:
            model = ValueModel.from_pretrained(c.init, param_dtype=cfg.model.param_dtype,
                                               dtype=cfg.model.dtype, mesh=mesh)
        graphdef, params = split_value_model(model)
        return cls(graphdef, model.config, c, cfg.algo, mesh=mesh), params

    # ------------------------------------------------------------------ state
    def _replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def state_shardings(self, params: Any) -> CriticState | None:
        if self.mesh is None:
            return None
        p_shard = value_model_shardings(params, self.model_config, self.mesh)
        opt_shapes = jax.eval_shape(self.optimizer.init, params)
        o_shard = optax.tree_map_params(self.optimizer, lambda _, s: s, opt_shapes, p_shard,
                                        transform_non_params=lambda _: self._replicated())
        return CriticState(params=p_shard, opt_state=o_shard, step=self._replicated())

    def init_state(self, params: Any) -> CriticState:
        """A fresh :class:`CriticState` (on the mesh when there is one)."""
        sh = self.state_shardings(params)
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
        step = jnp.zeros((), jnp.int32)
        if sh is None:
            return CriticState(params=params, opt_state=self.optimizer.init(params), step=step)
        params = jax.device_put(params, sh.params)
        opt_state = jax.jit(self.optimizer.init, out_shardings=sh.opt_state)(params)
        return CriticState(params=params, opt_state=opt_state,
                           step=jax.device_put(step, self._replicated()))

    def abstract_state(self, params: Any) -> CriticState:
        """``ShapeDtypeStruct`` tree (with shardings) of the state: the restore target."""
        shapes = jax.eval_shape(lambda p: CriticState(
            params=p, opt_state=self.optimizer.init(p), step=jnp.zeros((), jnp.int32)), params)
        sh = self.state_shardings(params)
        if sh is None:
            dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev),
                                shapes)
        return jax.tree.map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d),
                            shapes, sh)

    # ------------------------------------------------------------------ values and credit
    def values(self, state: CriticState, batch: Mapping[str, Any]) -> jax.Array:
        """``[B, T]`` rollout-time values of a placed batch (``tokens``, ``positions``,
        ``segment_ids``)."""
        keys = ("tokens", "positions", "segment_ids")
        return self._values(state.params, {k: batch[k] for k in keys if batch.get(k) is not None})

    def credit(self, inputs: CreditInputs) -> Credit:
        """GAE of the rollout batch ``inputs`` (its ``values`` and log-probs filled in)."""
        out: GAEOutput = gae_from_credit(inputs)
        metrics = _credit_metrics(out, inputs.values, jnp.asarray(inputs.loss_mask, jnp.float32))
        return Credit(advantages=out.advantages, returns=out.returns, values=inputs.values,
                      metrics=metrics)

    # ------------------------------------------------------------------ update
    def update(self, state: CriticState, batch: Mapping[str, Any]) -> tuple[CriticState, dict]:
        """``critic.ppo_epochs`` passes over ``critic.ppo_minibatches`` consecutive-row
        mini-batches of ``batch`` (placed; ``tokens, positions, segment_ids, loss_mask,
        returns, old_values``); returns the new state and the mean metrics (host floats)."""
        n = self.cfg.minibatches(self.algo)
        rows = int(batch["tokens"].shape[0])
        if rows % n:
            raise ConfigError(f"critic.ppo_minibatches={n} must divide the rollout batch of "
                              f"{rows} rows")
        size = rows // n
        batch = {k: v for k, v in batch.items() if v is not None}
        params, opt_state, step = state.params, state.opt_state, state.step
        all_metrics = []
        for _ in range(self.cfg.ppo_epochs):
            for i in range(n):
                mini = batch if n == 1 else self._slice(batch, jnp.asarray(i * size, jnp.int32),
                                                        size)
                params, opt_state, m = self._update(params, opt_state, mini)
                all_metrics.append(m)
                step = step + 1
        all_metrics = jax.device_get(all_metrics)
        mean = lambda k: float(np.mean([m[k] for m in all_metrics]))  # noqa: E731
        metrics = {"vf_loss": mean("vf_loss"), "vf_clip_frac": mean("vf_clip_frac"),
                   "vf_explained_var": mean("explained_variance"),
                   "grad_norm": mean("critic_grad_norm")}
        return CriticState(params=params, opt_state=opt_state, step=step), metrics
