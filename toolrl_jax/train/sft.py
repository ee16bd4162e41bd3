"""Supervised warm start: cross-entropy on assistant tokens only.

``loss = - sum_{b,t} m[b,t] log p(x[b,t] | x[b,<t]) / sum m``, with ``m`` the loss mask that
:meth:`toolrl_jax.chat.Conversation.from_messages` (``train_on_assistant=True``) puts on the
assistant content and its end-of-turn token. Log-probs come from the same vocab-chunked code as
the GRPO step (:func:`toolrl_jax.rl.train_step.token_logprobs`), so no ``[B, T, V]`` float32
logits are built. The state is the GRPO :class:`~toolrl_jax.rl.train_step.TrainState`, so an
SFT checkpoint feeds ``train`` directly.

Mesh and micro-batching: with a mesh the state follows the GRPO learner's shardings (FSDP x TP)
and the batch is split over ``('data', 'fsdp')`` (several processes: each passes its rows); with
``micro_batch_size`` the gradient is accumulated over micro-batches (rows ``m::M``, as in the
GRPO step) with the denominator ``sum m`` of the whole batch, so it equals the one-batch step up
to float summation order.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolrl_jax.chat import Conversation
from toolrl_jax.data.batching import pad_batch
from toolrl_jax.errors import ConfigError
from toolrl_jax.rl.train_step import (
    AlgoConfig,
    Learner,
    OptimConfig,
    TrainState,
    _split_micro,
    make_optimizer,
    token_logprobs,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """The YAML ``sft:`` section: an optional supervised warm start before RL.

    Attributes:
      steps: optimizer steps (0 = no warm start).
      batch_size: examples per step.
      learning_rate: peak learning rate (the rest of the optimizer is ``optim:``).
      source: a registered SFT source (``train.sft_sources``): ``generated`` (the run's training
        tasks with their ground truths), ``toolrl_json`` (ToolRL's SFT file at ``path``) or
        ``math_cold_start`` (ReTool's executed code traces).
      path: the SFT file for ``toolrl_json``.
      max_tokens: longer examples are skipped.
      micro_batch_size: rows per gradient-accumulation micro-batch (None = the whole batch);
        must divide ``batch_size``.
    """

    steps: int = 0
    batch_size: int = 8
    learning_rate: float = 1e-5
    source: str = "generated"
    path: str | None = None
    max_tokens: int = 2048
    micro_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.micro_batch_size is not None and (
                self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size):
            raise ConfigError(f"sft.micro_batch_size={self.micro_batch_size} must be >= 1 and "
                              f"divide sft.batch_size={self.batch_size} (or null)")
        if self.steps < 0:
            raise ConfigError(f"sft.steps: must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"sft.batch_size: must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"sft.learning_rate: must be > 0, got {self.learning_rate}")
        if self.max_tokens < 2:
            raise ConfigError(f"sft.max_tokens: must be >= 2, got {self.max_tokens}")
        if self.source == "toolrl_json" and self.steps and not self.path:
            raise ConfigError("sft.path: required for sft.source=toolrl_json")


def sft_example(tokenizer, template, messages: Sequence[Mapping[str, Any]], answer: str
                ) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of ``messages + [assistant: answer]`` (mask 1 on the answer)."""
    conv = Conversation.from_messages(
        tokenizer, template, list(messages) + [{"role": "assistant", "content": answer}],
        train_on_assistant=True,
    )
    return list(conv.ids), list(conv.loss_mask)


def pad_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], length: int,
                 pad_id: int = 0) -> dict[str, np.ndarray]:
    """Right-pads ``(ids, mask)`` pairs to ``[B, length]`` arrays (tokens, positions, ...)."""
    tokens, valid, _ = pad_batch([ids for ids, _ in examples], (length,), pad_id)
    mask, _, _ = pad_batch([m for _, m in examples], (length,), 0)
    mask = mask.astype(np.float32)
    mask[:, 0] = 0.0  # no prediction for the first token
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy()
    return {"tokens": tokens, "positions": positions, "segment_ids": valid.astype(np.int32),
            "loss_mask": mask}


class SFTLearner:
    """Jitted SFT step ``(state, batch) -> (state, metrics)`` over a model's graphdef.

    Args:
      graphdef: the model's static part.
      optim: optimizer config.
      vocab_chunk: vocabulary columns per log-prob chunk.
      mesh: a ``('data', 'fsdp', 'tp')`` mesh (None: one device); needs ``model_config``.
      model_config: the model's config (sharding rules).
      micro_batch_size: rows per accumulation micro-batch (None: the whole batch).
      frozen_params: LoRA: the frozen base (params are then the adapters only), a separate
        non-differentiated argument of the step, as in the GRPO learner.
    """

    def __init__(self, graphdef, optim: OptimConfig, *, vocab_chunk: int = 8192, mesh=None,
                 model_config: Any = None, micro_batch_size: int | None = None,
                 frozen_params: Any = None):
        self.graphdef = graphdef
        self.frozen_params = frozen_params
        self.optimizer = make_optimizer(optim)
        self.vocab_chunk = vocab_chunk
        self.mesh = mesh
        self.micro_batch_size = micro_batch_size
        # placement (state shardings, batch sharding) is the GRPO learner's
        self.placement = Learner(graphdef, model_config, AlgoConfig(), optim, mesh=mesh,
                                 frozen_params=frozen_params)
        self._step: Any = None

    def init_state(self, params: Any, seed: int = 0) -> TrainState:
        if self.mesh is not None:
            return self.placement.init_state(params, seed=seed)
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
        return TrainState(params=params, opt_state=self.optimizer.init(params),
                          step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed))

    def abstract_state(self, params: Any) -> TrainState:
        """The restore target of an SFT checkpoint (shapes and shardings)."""
        return self.placement.abstract_state(params)

    def loss(self, params, batch, frozen=None) -> tuple[jax.Array, dict]:
        lp, _ = token_logprobs(self.graphdef, params, batch, vocab_chunk=self.vocab_chunk,
                               compute_entropy=False, frozen=frozen)
        mask = batch["loss_mask"].astype(jnp.float32)
        n = jnp.maximum(mask.sum(), 1.0)
        nll = -(lp * mask).sum() / n
        return nll, {"sft_loss": nll, "sft_tokens": mask.sum()}

    def _micro_nll(self, params, mb, n, frozen=None):
        lp, _ = token_logprobs(self.graphdef, params, mb, vocab_chunk=self.vocab_chunk,
                               compute_entropy=False, frozen=frozen)
        return -(lp * mb["loss_mask"].astype(jnp.float32)).sum() / n

    def loss_and_grads(self, params, batch, frozen=None) -> tuple[jax.Array, Any, dict]:
        """``nll = -sum m log p / sum m`` and its gradient, accumulated over micro-batches."""
        bsz = batch["tokens"].shape[0]
        mbs = self.micro_batch_size or bsz
        if bsz % mbs:
            raise ConfigError(f"sft.micro_batch_size={mbs} must divide the batch of {bsz} rows")
        if mbs == bsz:
            (loss, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(params, batch,
                                                                                frozen)
            return loss, grads, metrics
        tokens = batch["loss_mask"].astype(jnp.float32).sum()
        n = jnp.maximum(tokens, 1.0)
        micro = _split_micro(batch, bsz // mbs, self.mesh)
        grad_fn = jax.value_and_grad(self._micro_nll)

        def body(carry, mb):
            g_acc, l_acc = carry
            loss, g = grad_fn(params, mb, n, frozen)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss), None

        init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))
        (grads, loss), _ = jax.lax.scan(body, init, micro)
        return loss, grads, {"sft_loss": loss, "sft_tokens": tokens}

    def _train_step(self, state: TrainState, batch, frozen=None):
        _, grads, metrics = self.loss_and_grads(state.params, batch, frozen)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return TrainState(params=params, opt_state=opt_state, step=state.step + 1,
                          rng=state.rng), metrics

    def _compiled(self):
        if self._step is None:
            frozen = self.frozen_params is not None
            if self.mesh is None:
                step = jax.jit(self._train_step, donate_argnums=0)
            else:
                p = self.placement
                ins = (p._state_shardings, p.batch_sharding)
                step = jax.jit(self._train_step, donate_argnums=0,
                               in_shardings=ins + ((p._frozen_shardings(),) if frozen else ()),
                               out_shardings=(p._state_shardings, p.replicated))
            self._step = (step if not frozen else
                          lambda state, batch: step(state, batch, self.frozen_params))
        return self._step

    def step(self, state: TrainState, batch: Mapping[str, np.ndarray]):
        """One step; with a mesh ``batch`` holds this process's rows of the global batch."""
        if self.mesh is None:
            return self._compiled()(state, {k: jnp.asarray(v) for k, v in batch.items()})
        return self._compiled()(state, self.placement.shard_batch(batch))
