"""The critic's loss and update step (PPO with GAE), pure functions of arrays.

The critic is :class:`toolrl_jax.models.value_head.ValueModel` split into a static ``graphdef``
and a params pytree (:func:`split_value_model`). A critic batch is a dict with ``tokens``,
``positions``, optional ``segment_ids`` (as the policy batch of :mod:`toolrl_jax.rl.train_step`),
``loss_mask`` ``[B, T]``, ``returns`` ``[B, T]`` (:func:`toolrl_jax.rl.gae.compute_gae`) and
optional ``old_values`` ``[B, T]`` (the values at rollout time, for value clipping).

Loss: :func:`toolrl_jax.rl.gae.value_loss` (token-mean ``0.5 max((V - R)^2, (V_clip - R)^2)``),
then one step of the critic's own optax optimizer (e.g.
``rl.train_step.make_optimizer(OptimConfig(learning_rate=1e-5))``, verl's critic lr).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from flax import nnx

from toolrl_jax.models.value_head import ValueModel
from toolrl_jax.rl.gae import value_loss

Batch = Mapping[str, Any]


def split_value_model(model: ValueModel) -> tuple[nnx.GraphDef, dict]:
    """``(graphdef, params)`` with params as a plain nested dict (``nnx.to_pure_dict``)."""
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def critic_values(graphdef: nnx.GraphDef, params: Any, batch: Batch) -> jax.Array:
    """``[B, T]`` values ``V(tokens[:, :t])`` of a batch (``tokens``, ``positions``, optional
    ``segment_ids``); column 0 is 0."""
    model = nnx.merge(graphdef, params)
    return model.values(batch["tokens"], batch["positions"], segment_ids=batch.get("segment_ids"))


def critic_loss(
    graphdef: nnx.GraphDef, params: Any, batch: Batch, *, vf_clip: float | None = 0.5
) -> tuple[jax.Array, dict]:
    """``(loss, metrics)``: the clipped value loss of the batch (``old_values`` absent = no
    clipping) with the clip fraction, value / return means and explained variance."""
    values = critic_values(graphdef, params, batch)
    return value_loss(values, batch["returns"], batch["loss_mask"],
                      old_values=batch.get("old_values"), vf_clip=vf_clip)


def make_critic_update(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    vf_clip: float | None = 0.5,
    donate: bool = True,
) -> Callable[[Any, Any, Batch], tuple[Any, Any, dict]]:
    """Jitted ``(params, opt_state, batch) -> (params, opt_state, metrics)``: one optax step on
    :func:`critic_loss`.

    Metrics: ``vf_loss``, ``vf_clip_frac``, ``explained_variance`` (of the returns by the values
    *before* the step), ``value_mean``, ``return_mean``, ``num_tokens``, ``critic_grad_norm``.
    ``params`` and ``opt_state`` are donated unless ``donate=False``. With a mesh, place params
    with :func:`toolrl_jax.models.value_head.value_model_shardings` and the batch rows over
    ``('data', 'fsdp')`` first; jit propagates the shardings.
    """

    def update(params, opt_state, batch):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: critic_loss(graphdef, p, batch, vf_clip=vf_clip), has_aux=True
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(metrics, vf_loss=loss, critic_grad_norm=optax.tree.norm(grads))
        return params, opt_state, metrics

    return jax.jit(update, donate_argnums=(0, 1) if donate else ())


def make_values_fn(graphdef: nnx.GraphDef) -> Callable[[Any, Batch], jax.Array]:
    """Jitted ``(params, batch) -> values [B, T]`` (rollout-time values for GAE)."""
    return jax.jit(lambda params, batch: critic_values(graphdef, params, batch))
