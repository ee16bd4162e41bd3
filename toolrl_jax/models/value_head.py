"""Critic for PPO: the decoder with a scalar value head on the final hidden state.

``ValueModel`` composes a :class:`~toolrl_jax.models.decoder.Decoder` (same weights layout, its
LM head dropped: the critic never needs logits) and a linear head ``D -> 1``::

    h = Decoder.hidden(tokens, positions, segment_ids)          [B, T, D] (final norm applied)
    u[b, t] = h[b, t] . w + c                                    float32
    values[b, 0] = 0,  values[b, t] = u[b, t - 1]                [B, T]

so ``values[b, t] = V(tokens[b, :t])``, the value of the state in which token ``t`` is chosen:
the convention of :mod:`toolrl_jax.rl.gae` (per-token arrays aligned with ``tokens``). This is
what verl's critic computes (``values = logits[:, -response_length - 1:-1]``).

Initialisation (as in verl / OpenRLHF): the decoder from the policy's weights
(:meth:`ValueModel.from_policy`, a copy: the critic trains its own weights) or from a Hugging
Face directory (:meth:`ValueModel.from_pretrained`); the head starts at ``w = 0, c = 0``, so the
first values are 0 and the first GAE advantages are the plain rewards-to-go.

Parameter paths (``nnx.state(model, nnx.Param)``) are the decoder's under ``decoder.`` plus
``value_head.kernel [D, 1]`` and ``value_head.bias [1]``. PartitionSpecs
(:func:`value_model_partition_specs`) reuse :func:`toolrl_jax.models.sharding.param_partition_specs`
for the decoder part; the head kernel is split over ``fsdp`` on ``D`` (replicated when ``D`` does
not divide), the bias is replicated.

The critic's loss and update step live in :mod:`toolrl_jax.rl.critic`.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder
from toolrl_jax.models.sharding import fit_spec, param_partition_specs
from toolrl_jax.models.weights import load_model_from_hf_dir


class ValueHead(nnx.Module):
    """``u = h . kernel + bias`` in float32; kernel ``[D, 1]``, zero-initialised."""

    def __init__(self, hidden_size: int, *, param_dtype: Any = jnp.float32):
        self.kernel = nnx.Param(jnp.zeros((hidden_size, 1), jnp.dtype(param_dtype)))
        self.bias = nnx.Param(jnp.zeros((1,), jnp.dtype(param_dtype)))

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """``[..., D] -> [...]`` float32."""
        u = jnp.dot(hidden.astype(jnp.float32), self.kernel[...].astype(jnp.float32))
        return u[..., 0] + self.bias[...].astype(jnp.float32)[0]


class ValueModel(nnx.Module):
    """Decoder + :class:`ValueHead` (module docstring). Takes ownership of ``decoder`` (its LM
    head is removed); build it with :meth:`from_policy`, :meth:`from_pretrained` or
    :meth:`create`."""

    def __init__(self, decoder: Decoder):
        self.config: ModelConfig = decoder.config
        decoder.lm_head = None  # never used by the critic; saves V x D parameters
        self.decoder = decoder
        self.value_head = ValueHead(self.config.hidden_size, param_dtype=self.config.param_dtype)

    @classmethod
    def create(cls, config: ModelConfig, *, rngs: nnx.Rngs) -> "ValueModel":
        """A randomly initialised critic (tests)."""
        return cls(Decoder(config, rngs=rngs))

    @classmethod
    def from_policy(cls, policy: Decoder) -> "ValueModel":
        """A critic whose decoder is a copy of ``policy``'s weights (buffers not shared)."""
        graphdef, state = nnx.split(policy)
        state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)
        return cls(nnx.merge(graphdef, state))

    @classmethod
    def from_pretrained(
        cls, model_dir: str | pathlib.Path, *, param_dtype: str = "float32",
        dtype: str = "float32", mesh: Mesh | None = None,
    ) -> "ValueModel":
        """A critic initialised from a Hugging Face directory (e.g. a reward or SFT model)."""
        decoder, _ = load_model_from_hf_dir(model_dir, param_dtype=param_dtype, dtype=dtype,
                                            mesh=mesh)
        return cls(decoder)

    def values(
        self, tokens: jax.Array, positions: jax.Array, *, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """``[B, T]`` float32 ``values[b, t] = V(tokens[b, :t])``; column 0 is 0."""
        hidden, _ = self.decoder.hidden(tokens, positions, segment_ids=segment_ids)
        u = self.value_head(hidden[:, :-1])
        return jnp.pad(u, ((0, 0), (1, 0)))


# --------------------------------------------------------------------------- sharding


def value_model_partition_specs(
    config: ModelConfig, *, mesh: Mesh | None = None
) -> dict[tuple, P]:
    """Critic param path -> PartitionSpec (decoder rules under ``decoder``, head on fsdp)."""
    specs = {
        ("decoder",) + path: spec
        for path, spec in param_partition_specs(config, mesh=mesh).items()
        if path != ("lm_head", "kernel")
    }
    head = P("fsdp", None)
    if mesh is not None:
        head = fit_spec(head, (config.hidden_size, 1), mesh)
    specs[("value_head", "kernel")] = head
    specs[("value_head", "bias")] = P()
    return specs


def _path_key(path) -> tuple:
    out = []
    for k in path:
        k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        out.append(int(k) if isinstance(k, (int, np.integer)) else k)
    if out and out[-1] == "value":
        out.pop()
    return tuple(out)


def value_model_shardings(params: Any, config: ModelConfig, mesh: Mesh) -> Any:
    """NamedShardings for a critic param tree (pure dict or ``nnx.State``)."""
    specs = value_model_partition_specs(config, mesh=mesh)

    def one(path, _):
        key = _path_key(path)
        if key not in specs:
            raise ValueError(f"no sharding rule for critic parameter {key!r}")
        return NamedSharding(mesh, specs[key])

    return jax.tree_util.tree_map_with_path(one, params)


def shard_value_model(model: ValueModel, mesh: Mesh) -> None:
    """Move every parameter of the critic onto its NamedSharding (in place)."""
    specs = value_model_partition_specs(model.config, mesh=mesh)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            key = tuple(int(k) if isinstance(k, (int, np.integer)) else k for k in path)
            var.set_value(jax.device_put(var.get_value(), NamedSharding(mesh, specs[key])))
