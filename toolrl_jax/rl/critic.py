"""The critic's loss and update step (PPO with GAE), pure functions of arrays.

The critic is :class:`toolrl_jax.models.value_head.ValueModel` split into a static ``graphdef``
and a params pytree (:func:`split_value_model`). A critic batch is a dict with ``tokens``,
``positions``, optional ``segment_ids`` (as the policy batch of :mod:`toolrl_jax.rl.train_step`),
``loss_mask`` ``[B, T]``, ``returns`` ``[B, T]`` (:func:`toolrl_jax.rl.gae.compute_gae`) and
optional ``old_values`` ``[B, T]`` (the values at rollout time, for value clipping).

Loss: :func:`toolrl_jax.rl.gae.value_loss` (token-mean ``0.5 max((V - R)^2, (V_clip - R)^2)``),
then one step of the critic's own optax optimizer (e.g.
``rl.train_step.make_optimizer(OptimConfig(learning_rate=1e-5))``, verl's critic lr).

Gradient accumulation (``micro_batch_size``): micro-batch ``m`` of ``M`` holds rows
``m, m + M, ...`` (the layout of :mod:`toolrl_jax.rl.train_step`, so a row-sharded batch stays
sharded); the gradient is ``sum_m d/dθ numerator_m / N`` with ``N`` the whole batch's action
count (:func:`toolrl_jax.rl.gae.value_loss_terms`), so it equals the one-batch gradient up to
summation order. The explained variance is then computed from summed moments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from toolrl_jax.models.value_head import ValueModel
from toolrl_jax.rl.gae import value_loss, value_loss_terms

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


def _split_micro(batch: Batch, num_micro: int, mesh: Mesh | None) -> dict:
    """``[B, ...] -> [M, B/M, ...]``, micro-batch ``m`` = rows ``m::M``."""

    def one(x):
        b = x.shape[0]
        y = jnp.swapaxes(x.reshape((b // num_micro, num_micro) + x.shape[1:]), 0, 1)
        if mesh is not None:
            y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, ("data", "fsdp"))))
        return y

    return {k: one(jnp.asarray(v)) for k, v in batch.items() if v is not None}


def _moments(values: jax.Array, batch: Batch) -> jax.Array:
    """``[5]`` masked sums ``(sum R, sum R^2, sum (R - V), sum (R - V)^2, n)`` of a micro-batch."""
    m = batch["loss_mask"].astype(jnp.float32)
    r = batch["returns"].astype(jnp.float32)
    d = r - jax.lax.stop_gradient(values)
    return jnp.stack([jnp.sum(r * m), jnp.sum(r * r * m), jnp.sum(d * m), jnp.sum(d * d * m),
                      jnp.sum(m)])


def _explained_variance_from_moments(mom: jax.Array) -> jax.Array:
    """``1 - Var(R - V) / (Var(R) + 1e-5)`` with unbiased variances from summed moments."""
    n = mom[4]
    var = lambda s, s2: jnp.where(n > 1, (s2 - s * s / jnp.maximum(n, 1.0))  # noqa: E731
                                  / jnp.maximum(n - 1.0, 1.0), 0.0)
    return 1.0 - var(mom[2], mom[3]) / (var(mom[0], mom[1]) + 1e-5)


def _accumulated_loss_and_grads(graphdef, params, batch, num_micro, vf_clip, mesh):
    """``(loss, metrics, grads)`` summed over ``num_micro`` micro-batches (module docstring)."""
    total = jnp.maximum(jnp.sum(jnp.asarray(batch["loss_mask"], jnp.float32)), 1.0)
    micro = _split_micro(batch, num_micro, mesh)

    def terms(p, mb):
        values = critic_values(graphdef, p, mb)
        t = value_loss_terms(values, mb["returns"], mb["loss_mask"],
                             old_values=mb.get("old_values"), vf_clip=vf_clip)
        return t.numerator / total, (t.sums, _moments(values, mb))

    grad_fn = jax.value_and_grad(terms, has_aux=True)

    def body(carry, mb):
        g_acc, s_acc, m_acc = carry
        (_, (sums, mom)), g = grad_fn(params, mb)
        add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
        return (add(g_acc, g), add(s_acc, sums), m_acc + mom), None

    first = jax.tree.map(lambda x: x[0], micro)
    sums_shape = jax.eval_shape(lambda: terms(params, first)[1][0])
    init = (jax.tree.map(jnp.zeros_like, params),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape),
            jnp.zeros((5,), jnp.float32))
    (grads, sums, mom), _ = jax.lax.scan(body, init, micro)
    metrics = {k: (v if k == "num_tokens" else v / total) for k, v in sums.items()}
    metrics["explained_variance"] = _explained_variance_from_moments(mom)
    return metrics["vf_loss"], metrics, grads


def make_critic_update(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    vf_clip: float | None = 0.5,
    donate: bool = True,
    micro_batch_size: int | None = None,
    mesh: Mesh | None = None,
) -> Callable[[Any, Any, Batch], tuple[Any, Any, dict]]:
    """Jitted ``(params, opt_state, batch) -> (params, opt_state, metrics)``: one optax step on
    :func:`critic_loss`.

    Metrics: ``vf_loss``, ``vf_clip_frac``, ``explained_variance`` (of the returns by the values
    *before* the step), ``value_mean``, ``return_mean``, ``num_tokens``, ``critic_grad_norm``.
    ``params`` and ``opt_state`` are donated unless ``donate=False``. With a mesh, place params
    with :func:`toolrl_jax.models.value_head.value_model_shardings` and the batch rows over
    ``('data', 'fsdp')`` first; jit propagates the shardings (pass ``mesh`` to keep the
    micro-batches row-sharded). ``micro_batch_size`` (rows; None = the whole batch) must divide
    the batch: gradient accumulation over ``rows / micro_batch_size`` micro-batches.
    """

    def update(params, opt_state, batch):
        rows = int(batch["tokens"].shape[0])
        num_micro = 1 if micro_batch_size is None else rows // micro_batch_size
        if micro_batch_size is not None and rows % micro_batch_size:
            raise ValueError(f"critic micro_batch_size={micro_batch_size} must divide the "
                             f"mini-batch of {rows} rows")
        if num_micro > 1:
            loss, metrics, grads = _accumulated_loss_and_grads(graphdef, params, batch,
                                                               num_micro, vf_clip, mesh)
        else:
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
