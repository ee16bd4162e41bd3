"""One compiled, sharded GRPO optimizer step with exact gradient accumulation.

Data layout. A batch is a dict of arrays whose leading dimension is the row (sequence) ``B``;
every per-token array is aligned with ``tokens``: entry ``[b, t]`` is about token ``t`` given
the tokens before it (the convention of ``chat.Conversation`` and the rollout engine).

==================  =========  =========================================================
key                 shape      meaning
==================  =========  =========================================================
tokens              [B, T]     int32 token ids (prompt + response, padded)
positions           [B, T]     int32 RoPE positions
segment_ids         [B, T]     int32, 0 = padding (optional; default all ones)
loss_mask           [B, T]     1 on generated tokens that are trained on; ``loss_mask[:, 0]``
                               must be 0 and a masked token must follow a token of its segment
advantages          [B]/[B,T]  advantages (computed on the whole rollout batch beforehand)
old_logprobs        [B, T]     log-probs of the policy before this rollout batch's first update
                               (optional: absent = on-policy, ratio 1 with the right gradient)
ref_logprobs        [B, T]     reference-policy log-probs (needed when ``loss.kl_coef > 0``)
sample_logprobs     [B, T]     sampler's log-probs (truncated IS / mismatch metrics; optional)
==================  =========  =========================================================

Step. With ``M = B / micro_batch_size`` micro-batches (micro-batch ``m`` holds rows
``m, m + M, m + 2M, ...`` so a batch sharded over rows stays sharded), the gradient is::

    grad = sum_m d/dθ [ sum_{b in m, t} w_{b,t} l_{b,t}(θ) ] / D

where ``w`` and ``D`` come from :mod:`toolrl_jax.rl.losses` (``D`` is computed from the whole
batch's loss mask before splitting), so accumulation over a ``lax.scan`` equals one big batch up
to float summation order. Then ``optax.clip_by_global_norm`` and AdamW with an optax schedule.
Mixed precision: parameters (and AdamW moments, ``moment_dtype``) are stored in
``ModelConfig.param_dtype`` (float32 master weights) and cast once per step to
``ModelConfig.dtype`` (e.g. bfloat16) for the forward/backward; gradients are accumulated in
float32.

State. :class:`TrainState` (params as a plain nested dict + optax state + step + PRNG key) is one
pytree, donated to the step and saved whole by :mod:`toolrl_jax.train.checkpoint`. The model's
``graphdef`` (``nnx.split``) is static and closed over.

Sharding. With a mesh (``models.sharding.make_mesh``), parameters and the matching AdamW moments
follow ``param_partition_specs`` (FSDP x TP), batches split their rows over
``('data', 'fsdp')``, scalars are replicated. The same code runs on one device without a mesh.

LoRA. With ``frozen_params`` (:class:`Learner`), ``params`` are the adapters only
(:func:`toolrl_jax.models.lora.split_adapters`): gradients, AdamW moments and checkpoints cover
them alone, and the frozen base weights are one more argument of every compiled function
(``nnx.merge(graphdef, params, frozen)``), never differentiated, never donated.

PPO mini-batches. :meth:`Learner.ppo_update` splits one rollout batch into several mini-batches
(one optimizer step each, ``epochs`` passes) that reuse ``old_logprobs`` computed once with
:meth:`Learner.compute_logprobs` before the first update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from toolrl_jax.errors import ConfigError
from toolrl_jax.models.decoder import REMAT_POLICIES
from toolrl_jax.models.lora import adapter_specs
from toolrl_jax.models.sharding import param_partition_specs
from toolrl_jax.rl import advantages as advantages_lib
from toolrl_jax.rl import losses as losses_lib
from toolrl_jax.rl.gae import GAEConfig
from toolrl_jax.rl.logprobs import token_logprobs_and_entropy
from toolrl_jax.rl.turn_advantages import TurnAdvantageConfig  # also registers turn_grpo

Batch = Mapping[str, Any]
PER_TOKEN_KEYS = ("old_logprobs", "ref_logprobs", "sample_logprobs")
BATCH_KEYS = ("tokens", "positions", "segment_ids", "loss_mask", "advantages") + PER_TOKEN_KEYS


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW + schedule + clipping (defaults: released ToolRL, lr 1e-6 constant, clip 1.0).

    Attributes:
      learning_rate: peak learning rate.
      schedule: ``constant``, ``cosine`` (to ``min_lr_ratio * lr`` at ``total_steps``) or
        ``linear`` (same end point); all with linear warm-up from 0 over ``warmup_steps``.
      warmup_steps, total_steps: in optimizer steps (``total_steps`` used by cosine / linear).
      min_lr_ratio: final lr as a fraction of the peak for cosine / linear.
      b1, b2, eps: AdamW moments.
      weight_decay: decoupled weight decay (verl's actor default 0.01).
      grad_clip_norm: global-norm clip, or None.
      moment_dtype: dtype of AdamW's first moment (``mu_dtype``), ``float32`` or ``bfloat16``;
        the second moment stays in the parameter dtype.
    """

    learning_rate: float = 1e-6
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    min_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip_norm: float | None = 1.0
    moment_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ConfigError(
                f"optim.schedule: {self.schedule!r} is not one of constant, cosine, linear"
            )
        if self.schedule != "constant" and self.total_steps <= self.warmup_steps:
            raise ConfigError(
                f"optim.total_steps: must exceed warmup_steps={self.warmup_steps} for the "
                f"{self.schedule} schedule, got {self.total_steps}"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ConfigError(
                f"optim.grad_clip_norm: must be > 0 or null, got {self.grad_clip_norm}"
            )
        if self.moment_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"optim.moment_dtype: {self.moment_dtype!r} is not float32/bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgoConfig:
    """The policy-gradient algorithm: advantages, loss, and how a rollout batch is consumed
    (the YAML ``algo:`` section).

    Attributes:
      advantage: :class:`~toolrl_jax.rl.advantages.AdvantageConfig` (``algo.advantage.*``).
      loss: :class:`~toolrl_jax.rl.losses.LossConfig` (``algo.loss.*``).
      gae: :class:`~toolrl_jax.rl.gae.GAEConfig` (``algo.gae.*``): gamma, lambda, whitening,
        value clip and the KL-in-reward penalty of ``advantage.estimator: gae`` (PPO with a
        critic; the critic's own settings are the ``critic:`` section).
      ppo_minibatches: optimizer steps per rollout batch; each takes ``rows / ppo_minibatches``
        consecutive rows and reuses the old log-probs computed once before the first.
      micro_batch_size: rows per gradient-accumulation micro-batch (None = the whole
        mini-batch); must divide the mini-batch.
      vocab_chunk: vocabulary columns per log-prob chunk.
      remat: rematerialise each decoder layer in the backward pass (the layers run as one
        ``lax.scan`` with a ``jax.checkpoint``-ed body, see ``models.decoder.scan_blocks``):
        activation memory ``O(L B T D)`` instead of keeping every layer's attention scores and
        MLP activations, for about one more forward pass of compute. Also used by SFT.
      remat_policy: what the rematerialised backward keeps (``models.decoder.REMAT_POLICIES``):
        ``full`` (each layer's input only) or ``dots`` (also the weight matmuls' outputs: the
        backward recomputes only attention and elementwise ops; faster, more memory).
      compute_entropy: compute the policy entropy (needed when ``loss.entropy_coef > 0``; else
        only logged).
      dynamic_sampling: DAPO dynamic sampling (arXiv 2503.14476): groups whose rewards are all
        equal are dropped and more prompts are sampled until the step has
        ``rollout.prompts_per_step`` informative groups.
      max_sampling_rounds: most rollout rounds per step with ``dynamic_sampling`` (the first
        included); when they are spent the batch is completed with constant groups, whose
        loss mask is zero, and the shortfall is logged.
      turn_advantage: :class:`~toolrl_jax.rl.turn_advantages.TurnAdvantageConfig`
        (``algo.turn_advantage.*``), the settings of ``advantage.estimator=turn_grpo``.
      pack_rows: pack the update's sequences several to a row (first-fit decreasing, segment
        ids; ``train.batch.pack_rows``) so fewer rows of the same length are trained on; rows
        without a loss token are dropped. The loss is the padded batch's (the decoder attends
        within a segment, the aggregation counts segments as sequences) with one PPO
        mini-batch; with several, mini-batches are slices of packed rows. Not with GSPO's
        sequence ratio (``loss.ratio_level: sequence``) or a critic (per-row values).
    """

    advantage: advantages_lib.AdvantageConfig = dataclasses.field(
        default_factory=advantages_lib.AdvantageConfig
    )
    loss: losses_lib.LossConfig = dataclasses.field(default_factory=losses_lib.LossConfig)
    gae: GAEConfig = dataclasses.field(default_factory=GAEConfig)
    ppo_minibatches: int = 1
    micro_batch_size: int | None = None
    vocab_chunk: int = 8192
    remat: bool = True
    remat_policy: str = "full"
    compute_entropy: bool = True
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 4
    turn_advantage: TurnAdvantageConfig = dataclasses.field(default_factory=TurnAdvantageConfig)
    pack_rows: bool = False

    def __post_init__(self) -> None:
        if self.ppo_minibatches < 1:
            raise ConfigError(f"algo.ppo_minibatches: must be >= 1, got {self.ppo_minibatches}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(
                f"algo.micro_batch_size: must be >= 1 or null, got {self.micro_batch_size}"
            )
        if self.vocab_chunk < 1:
            raise ConfigError(f"algo.vocab_chunk: must be >= 1, got {self.vocab_chunk}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"algo.remat_policy: {self.remat_policy!r} is not one of "
                              f"{', '.join(REMAT_POLICIES)}")
        if self.loss.entropy_coef > 0 and not self.compute_entropy:
            raise ConfigError("algo.compute_entropy: must be true when algo.loss.entropy_coef > 0")
        if self.pack_rows and self.loss.ratio_level == "sequence":
            raise ConfigError("algo.pack_rows: GSPO's sequence ratio (algo.loss.ratio_level="
                              "sequence) needs one sequence per row; set algo.pack_rows=false")
        if self.max_sampling_rounds < 1:
            raise ConfigError(
                f"algo.max_sampling_rounds: must be >= 1, got {self.max_sampling_rounds}"
            )


@flax.struct.dataclass
class TrainState:
    """All mutable training state in one pytree (what a checkpoint saves).

    Attributes:
      params: nested dict of parameter arrays (``nnx.to_pure_dict`` of the model's
        ``nnx.Param`` state, see :func:`split_model`; LoRA: the adapters only), master dtype.
      opt_state: optax state of :func:`make_optimizer`.
      step: int32 scalar, optimizer steps taken.
      rng: uint32 ``[2]`` raw PRNG key, split once per step (for stochastic extensions).
    """

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Learning-rate schedule ``step -> lr`` (linear warm-up, then constant / cosine / linear)."""
    lr, warm = cfg.learning_rate, cfg.warmup_steps
    end = lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warm, cfg.total_steps, end_value=end)
    if cfg.schedule == "linear":
        main = optax.linear_schedule(lr, end, cfg.total_steps - warm)
    else:
        main = optax.constant_schedule(lr)
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm`` (optional) then AdamW with :func:`make_schedule`."""
    parts = []
    if cfg.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(
        optax.adamw(
            make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
            weight_decay=cfg.weight_decay, mu_dtype=jnp.dtype(cfg.moment_dtype),
        )
    )
    return optax.chain(*parts)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
    """``(graphdef, params)`` with params as a plain nested dict (layers keyed by int)."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def _path_key(path) -> tuple:
    out = []
    for k in path:
        k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        out.append(int(k) if isinstance(k, (int, np.integer)) else k)
    return tuple(out)


def param_shardings_for(params: Any, model_config: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pure-dict param tree from ``models.sharding.param_partition_specs``."""
    specs = param_partition_specs(model_config, mesh=mesh)
    specs = {**specs, **adapter_specs(specs)}  # LoRA A / B follow their kernel
    return jax.tree_util.tree_map_with_path(
        lambda path, _: NamedSharding(mesh, specs.get(_path_key(path), P())), params
    )


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def token_logprobs(
    graphdef: nnx.GraphDef,
    params: Any,
    batch: Batch,
    *,
    vocab_chunk: int,
    temperature: float = 1.0,
    compute_entropy: bool = True,
    entropy_grad: bool = True,
    frozen: Any = None,
    remat: bool = True,
    remat_policy: str = "full",
) -> tuple[jax.Array, jax.Array | None]:
    """Policy log-probs (and entropy) ``[B, T]`` aligned with ``tokens``; column 0 is 0.

    ``logprobs[b, t] = log p(tokens[b, t] | tokens[b, :t])`` computed from the hidden state at
    ``t - 1`` with :func:`~toolrl_jax.rl.logprobs.token_logprobs_and_entropy` (vocab chunks).
    ``frozen``: the rest of the model's params (LoRA: the frozen base), merged with ``params``.
    ``remat``: the decoder layers as one rematerialised scan (``Decoder.hidden(remat=)``),
    keeping what ``remat_policy`` says.
    """
    model = nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)
    tokens = batch["tokens"]
    hidden, _ = model.hidden(
        tokens, batch["positions"], segment_ids=batch.get("segment_ids"), remat=remat,
        remat_policy=remat_policy,
    )
    kernel = model.lm_head_kernel().astype(hidden.dtype)
    lp, ent = token_logprobs_and_entropy(
        hidden[:, :-1], kernel, tokens[:, 1:], vocab_chunk=vocab_chunk,
        compute_entropy=compute_entropy, temperature=temperature, entropy_grad=entropy_grad,
    )
    pad = ((0, 0), (1, 0))
    return jnp.pad(lp, pad), (jnp.pad(ent, pad) if ent is not None else None)


def _split_micro(batch: Batch, num_micro: int, mesh: Mesh | None) -> dict:
    """``[B, ...] -> [M, B/M, ...]`` with micro-batch ``m`` = rows ``m::M`` (keeps row sharding)."""

    def one(x):
        x = jnp.asarray(x)
        b = x.shape[0]
        y = jnp.swapaxes(x.reshape((b // num_micro, num_micro) + x.shape[1:]), 0, 1)
        if mesh is not None:
            y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, ("data", "fsdp"))))
        return y

    return {k: one(v) for k, v in batch.items()}


class Learner:
    """Holds the static parts (graphdef, configs, mesh) and the compiled functions.

    Args:
      graphdef: from :func:`split_model`.
      model_config: the model's ``ModelConfig`` (dtypes; sharding rules).
      algo: :class:`AlgoConfig` (loss, micro-batching, vocab chunking).
      optim: :class:`OptimConfig`.
      temperature: logits are divided by it (the sampler's temperature; > 0).
      mesh: a ``('data', 'fsdp', 'tp')`` mesh, or None for one device / no sharding.
      frozen_params: LoRA: the frozen base weights (plain nested dict); ``params`` are then
        the adapters only and ``graphdef`` is :func:`~toolrl_jax.models.lora.split_adapters`'s.
        Passed to every compiled function as a separate, non-differentiated argument.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        model_config: Any,
        algo: AlgoConfig = AlgoConfig(),
        optim: OptimConfig = OptimConfig(),
        *,
        temperature: float = 1.0,
        mesh: Mesh | None = None,
        frozen_params: Any = None,
    ) -> None:
        if not temperature > 0:
            raise ConfigError(f"temperature: must be > 0, got {temperature}")
        self.graphdef = graphdef
        self.model_config = model_config
        self.algo = algo
        self.optim = optim
        self.temperature = float(temperature)
        self.mesh = mesh
        self.frozen_params = frozen_params
        self.optimizer = make_optimizer(optim)
        self.schedule = make_schedule(optim)
        self.compute_dtype = jnp.dtype(getattr(model_config, "dtype", "float32"))
        self._state_shardings: Any = None
        self._train_step: Callable | None = None
        self._logprob_fn: Callable | None = None

    # ------------------------------------------------------------------ shardings
    @property
    def batch_sharding(self) -> NamedSharding | None:
        """Rows over ``('data', 'fsdp')``; None without a mesh."""
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, P(("data", "fsdp")))

    @property
    def replicated(self) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, P())

    def state_shardings(self, params: Any) -> Any:
        """A :class:`TrainState`-shaped tree of NamedShardings (None without a mesh)."""
        if self.mesh is None:
            return None
        p_shard = param_shardings_for(params, self.model_config, self.mesh)
        opt_shapes = jax.eval_shape(self.optimizer.init, params)
        o_shard = optax.tree_map_params(
            self.optimizer, lambda _, s: s, opt_shapes, p_shard,
            transform_non_params=lambda _: self.replicated,
        )
        return TrainState(params=p_shard, opt_state=o_shard, step=self.replicated,
                          rng=self.replicated)

    def shard_batch(self, batch: Batch) -> dict:
        """Puts a host batch on the mesh (rows over ``('data', 'fsdp')``).

        Single process: ``device_put`` of the global batch. Several processes (multi-host):
        each process passes its own rows and they are assembled with
        ``jax.make_array_from_process_local_data``. Arrays already on the batch sharding
        (e.g. old / reference log-probs from :meth:`compute_logprobs`) are kept as they are,
        so nothing is fetched to a host.
        """
        batch = {k: v for k, v in batch.items() if v is not None}
        if self.mesh is None:
            return {k: jnp.asarray(v) for k, v in batch.items()}
        placed = {k: v for k, v in batch.items() if isinstance(v, jax.Array)
                  and not isinstance(v, jax.core.Tracer) and v.sharding == self.batch_sharding}
        host = {k: v for k, v in batch.items() if k not in placed}
        if not host:
            return placed
        return {**self._place_host_rows(host), **placed}

    def _place_host_rows(self, batch: Batch) -> dict:
        sh = self.batch_sharding
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        rows = int(np.shape(next(iter(batch.values())))[0]) * jax.process_count()
        if rows % shards:
            raise ConfigError(
                f"batch of {rows} rows is not divisible by data*fsdp={shards} mesh devices; "
                "pad the batch or change the mesh"
            )
        if jax.process_count() > 1:
            return {k: jax.make_array_from_process_local_data(sh, np.asarray(v))
                    for k, v in batch.items()}
        return {k: jax.device_put(v, sh) for k, v in batch.items()}

    # ------------------------------------------------------------------ state
    def init_state(self, params: Any, *, seed: int = 0) -> TrainState:
        """A fresh :class:`TrainState` (placed on the mesh when there is one)."""
        shardings = self.state_shardings(params)
        # copy: the step donates the state, the caller's arrays must stay valid
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
        if shardings is not None:
            params = jax.device_put(params, shardings.params)
            opt_state = jax.jit(self.optimizer.init, out_shardings=shardings.opt_state)(params)
        else:
            opt_state = self.optimizer.init(params)
        state = TrainState(
            params=params,
            opt_state=opt_state,
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.PRNGKey(seed),
        )
        if shardings is not None:
            state = state.replace(step=jax.device_put(state.step, self.replicated),
                                  rng=jax.device_put(state.rng, self.replicated))
        self._state_shardings = shardings
        return state

    def abstract_state(self, params: Any) -> TrainState:
        """``jax.ShapeDtypeStruct`` tree (with shardings) of the state: the restore target."""
        shapes = jax.eval_shape(lambda p: TrainState(
            params=p, opt_state=self.optimizer.init(p), step=jnp.zeros((), jnp.int32),
            rng=jax.random.PRNGKey(0)), params)
        shardings = self.state_shardings(params)
        self._state_shardings = shardings
        if shardings is None:
            dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev),
                                shapes)
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
        )

    # ------------------------------------------------------------------ loss
    def _forward(self, params: Any, batch: Batch, frozen: Any = None
                 ) -> tuple[jax.Array, jax.Array | None]:
        cfg = self.algo
        return token_logprobs(
            self.graphdef, params, batch, vocab_chunk=cfg.vocab_chunk,
            temperature=self.temperature, compute_entropy=cfg.compute_entropy,
            entropy_grad=cfg.loss.entropy_coef > 0, frozen=frozen, remat=cfg.remat,
            remat_policy=cfg.remat_policy,
        )

    def _micro_terms(self, cparams: Any, mb: Batch, denom: jax.Array, frozen: Any = None):
        lp, ent = self._forward(cparams, mb, frozen)
        old = mb.get("old_logprobs")
        if old is None:
            old = jax.lax.stop_gradient(lp)
        terms = losses_lib.policy_loss_terms(
            lp, old, mb["advantages"], mb["loss_mask"], self.algo.loss,
            ref_logprobs=mb.get("ref_logprobs") if self.algo.loss.kl_coef > 0 else None,
            entropy=ent, sample_logprobs=mb.get("sample_logprobs"),
            segment_ids=mb.get("segment_ids"),
        )
        return terms.numerator / denom, terms

    def loss_and_grads(self, params: Any, batch: Batch, frozen: Any = None
                       ) -> tuple[jax.Array, Any, dict]:
        """``(loss, grads float32, metrics)`` of one optimizer batch with micro-batching.

        Pure function of ``params``, ``batch`` and ``frozen`` (the LoRA base, not
        differentiated; None: ``params`` is the whole model). Traceable; used inside the step.
        """
        cfg = self.algo
        bsz = batch["tokens"].shape[0]
        mbs = cfg.micro_batch_size or bsz
        if bsz % mbs:
            raise ConfigError(
                f"micro_batch_size={mbs} must divide the batch size {bsz} (pad the batch)"
            )
        num_micro = bsz // mbs
        if self.mesh is not None:
            shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
            if mbs % shards:
                raise ConfigError(
                    f"micro_batch_size={mbs} rows must be divisible by data*fsdp={shards} "
                    "mesh devices (each device needs whole rows)"
                )
        denom = jnp.maximum(
            losses_lib.aggregation_denominator(batch["loss_mask"], cfg.loss.aggregation,
                                               batch.get("segment_ids")), 1e-20
        )
        cparams = params
        master = jax.tree.leaves(params)[0].dtype
        if self.compute_dtype != master:
            cparams = _cast_floats(params, self.compute_dtype)
        grad_fn = jax.value_and_grad(self._micro_terms, has_aux=True)
        f32 = lambda t: jax.tree.map(lambda g: g.astype(jnp.float32), t)  # noqa: E731

        if num_micro == 1:
            (loss, terms), grads = grad_fn(cparams, batch, denom, frozen)
            grads = f32(grads)
            loss_sums, token_sums = terms.loss_sums, terms.token_sums
        else:
            micro = _split_micro(batch, num_micro, self.mesh)

            def body(carry, mb):
                g_acc, l_acc, ls_acc, ts_acc = carry
                (mb_loss, terms), g = grad_fn(cparams, mb, denom, frozen)
                add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
                return (add(g_acc, f32(g)), l_acc + mb_loss, add(ls_acc, terms.loss_sums),
                        add(ts_acc, terms.token_sums)), None

            first = jax.tree.map(lambda x: x[0], micro)
            _, terms_shape = jax.eval_shape(
                lambda p, b: self._micro_terms(p, b, denom, frozen), cparams, first
            )
            zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), t)  # noqa: E731
            init = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
                    jnp.zeros((), jnp.float32), zeros(terms_shape.loss_sums),
                    zeros(terms_shape.token_sums))
            (grads, loss, loss_sums, token_sums), _ = jax.lax.scan(body, init, micro)
        metrics = losses_lib.finalize_metrics(loss_sums, token_sums, denom)
        return loss, grads, metrics

    def _step(self, state: TrainState, batch: Batch, frozen: Any = None
              ) -> tuple[TrainState, dict]:
        loss, grads, metrics = self.loss_and_grads(state.params, batch, frozen)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng, _ = jax.random.split(state.rng)
        metrics = dict(metrics)
        metrics.update(
            loss=loss,
            grad_norm=optax.tree.norm(grads),
            update_norm=optax.tree.norm(updates),
            learning_rate=jnp.asarray(self.schedule(state.step), jnp.float32),
            step=state.step + 1,
        )
        new_state = TrainState(params=params, opt_state=opt_state, step=state.step + 1, rng=rng)
        return new_state, metrics

    # ------------------------------------------------------------------ compiled
    @property
    def train_step(self) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
        """The jitted ``(state, batch) -> (state, metrics)``; the state is donated.

        Compiles once per batch shape / key set (pad batches to a few length buckets).
        Call :meth:`init_state` (or pass a restored state of the same layout) first.
        With ``frozen_params`` (LoRA) they are the jitted ``_step``'s third argument (not
        donated) and this returns ``(state, batch) -> jitted(state, batch, frozen_params)``.
        """
        if self._train_step is None:
            frozen = self.frozen_params is not None
            if self.mesh is None:
                step = jax.jit(self._step, donate_argnums=0)
            else:
                if self._state_shardings is None:
                    raise RuntimeError("Learner.train_step: call init_state() first")
                ins = (self._state_shardings, self.batch_sharding)
                step = jax.jit(
                    self._step,
                    in_shardings=ins + ((self._frozen_shardings(),) if frozen else ()),
                    out_shardings=(self._state_shardings, self.replicated),
                    donate_argnums=0,
                )
            self._train_step = (step if not frozen else
                                lambda state, batch: step(state, batch, self.frozen_params))
        return self._train_step

    def _frozen_shardings(self) -> Any:
        if self.frozen_params is None:
            return None
        return param_shardings_for(self.frozen_params, self.model_config, self.mesh)

    def _logprobs(self, params: Any, batch: Batch, frozen: Any = None) -> dict:
        cfg = self.algo
        bsz = batch["tokens"].shape[0]
        mbs = cfg.micro_batch_size or bsz
        num_micro = bsz // mbs if bsz % mbs == 0 else 1
        master = jax.tree.leaves(params)[0].dtype
        if self.compute_dtype != master:
            params = _cast_floats(params, self.compute_dtype)
        keys = ("tokens", "positions", "segment_ids")
        sub = {k: batch[k] for k in keys if k in batch}
        if num_micro == 1:
            lp, ent = self._forward(params, sub, frozen)
        else:
            micro = _split_micro(sub, num_micro, self.mesh)
            lp, ent = jax.lax.map(lambda mb: self._forward(params, mb, frozen), micro)
            unsplit = lambda x: jnp.swapaxes(x, 0, 1).reshape((bsz,) + x.shape[2:])  # noqa: E731
            lp = unsplit(lp)
            ent = unsplit(ent) if ent is not None else None
        out = {"logprobs": lp}
        if ent is not None:
            out["entropy"] = ent
        return out

    def compute_logprobs(self, params: Any, batch: Batch) -> dict:
        """Jitted ``{'logprobs': [B, T], 'entropy': [B, T]}`` for old / reference log-probs.

        Uses the same micro-batching and vocab chunking as the step; ``params`` may be the
        policy's (old log-probs) or a frozen reference model's of the same architecture.
        """
        if self._logprob_fn is None:
            if self.mesh is None:
                self._logprob_fn = jax.jit(self._logprobs)
            else:
                self._logprob_fn = jax.jit(self._logprobs, out_shardings=self.batch_sharding)
        keys = ("tokens", "positions", "segment_ids")
        return self._logprob_fn(params, {k: batch[k] for k in keys if k in batch},
                                self.frozen_params)

    # ------------------------------------------------------------------ PPO
    def ppo_update(
        self,
        state: TrainState,
        batch: Batch,
        *,
        num_mini_batches: int = 1,
        epochs: int = 1,
        shuffle_seed: int | None = None,
    ) -> tuple[TrainState, list[dict]]:
        """Several optimizer steps on one rollout batch (host loop over device mini-batches).

        The batch is placed on the mesh once (:meth:`shard_batch`; with several processes each
        passes its own rows and device arrays are kept); mini-batches are selected on device
        (a jitted slice / gather whose output stays sharded over ``('data', 'fsdp')``), so no
        array that another process owns is ever fetched.

        ``old_logprobs`` are computed once with the current params (unless the batch has them)
        when more than one step will be taken; each mini-batch is ``B / num_mini_batches``
        consecutive rows (or a permutation of rows per epoch when ``shuffle_seed`` is set).
        Advantages must already be in the batch (computed on the whole rollout batch).

        Returns:
          ``(state, [metrics of each step])`` (metrics stay on device; ``jax.device_get`` them).
        """
        batch = self.shard_batch(batch)  # host rows -> the mesh; device arrays stay put
        bsz = int(batch["tokens"].shape[0])  # global rows
        if num_mini_batches < 1 or bsz % num_mini_batches:
            raise ConfigError(
                f"ppo mini-batches: {num_mini_batches} must divide the rollout batch size {bsz}"
            )
        if "old_logprobs" not in batch and (num_mini_batches > 1 or epochs > 1):
            batch["old_logprobs"] = self.compute_logprobs(state.params, batch)["logprobs"]
        size = bsz // num_mini_batches
        rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        all_metrics = []
        for _ in range(epochs):
            order = rng.permutation(bsz) if rng is not None else None
            for i in range(num_mini_batches):
                if num_mini_batches == 1 and order is None:
                    mini = batch
                elif order is None:
                    mini = self._rows_slice(batch, i * size, size)
                else:
                    mini = self._rows_take(batch, np.asarray(order[i * size:(i + 1) * size],
                                                             np.int32))
                state, metrics = self.train_step(state, mini)
                all_metrics.append(metrics)
        return state, all_metrics

    # ------------------------------------------------------------------ on-device row selection
    def _row_fn(self, name: str, fn: Callable, static: tuple = ()) -> Callable:
        """``fn`` jitted once, its outputs on :attr:`batch_sharding` (rows over data x fsdp)."""
        cache = self.__dict__.setdefault("_row_fns", {})
        if name not in cache:
            kw = {} if self.mesh is None else {"out_shardings": self.batch_sharding}
            cache[name] = jax.jit(fn, static_argnums=static, **kw)
        return cache[name]

    def _rows_slice(self, batch: Batch, start: int, size: int) -> dict:
        """Rows ``[start, start + size)`` of a device batch, selected on device (no host copy
        of arrays that other processes own); the result stays sharded over the rows."""
        fn = self._row_fn("slice", lambda b, s, n: jax.tree.map(
            lambda x: jax.lax.dynamic_slice_in_dim(x, s, n, axis=0), b), static=(2,))
        return fn(dict(batch), jnp.asarray(start, jnp.int32), size)

    def _rows_take(self, batch: Batch, idx: np.ndarray) -> dict:
        """Rows ``idx`` (``[size]`` int32, the same on every process) of a device batch."""
        fn = self._row_fn("take", lambda b, i: jax.tree.map(lambda x: x[i], b))
        return fn(dict(batch), jnp.asarray(idx))
