"""LoRA for the NNX decoder: low-rank adapters on chosen linear layers, frozen base weights.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685).
A wrapped projection with kernel ``W [in, out]`` computes::

    y = x W (+ b) + (alpha / r) * (x A) B          A [in, r], B [r, out]

``A`` is initialised like PEFT's ``kaiming_uniform_(a=sqrt(5))`` (uniform in
``±1/sqrt(in)``) and ``B = 0``, so a freshly adapted model equals its base exactly. Adapter
weights are :data:`LoRAParam` variables (flax's ``nnx.LoRAParam``, a subclass of ``nnx.Param``):

* ``nnx.state(model, LoRAParam)`` selects only the adapters (train them, give only them to the
  optimizer: :func:`split_lora`); the base is ``nnx.All(nnx.Param, nnx.Not(LoRAParam))``
  (:data:`BASE_PARAMS`), kept frozen, optionally stored in bfloat16 (``LoRAConfig.base_dtype``).
* Reference model = the same weights with the adapter path switched off
  (:func:`adapters_disabled` / :func:`set_adapters_enabled`): no second copy of the base.
* Export: :func:`merge_lora` folds ``W + (alpha/r) A B`` (float32) into a plain
  :class:`~toolrl_jax.models.decoder.Decoder` that :func:`toolrl_jax.models.export.export_hf_dir`
  writes as a Hugging Face directory (:func:`export_merged`).

Parameter paths: a wrapped layer keeps ``kernel`` / ``bias`` at the decoder's paths (so HF
loading, export and the sharding rules of the base are unchanged) and adds ``lora_a``,
``lora_b`` next to them. Sharding (:func:`lora_partition_specs`): ``A`` follows the kernel's
input-dim spec with ``r`` replicated, ``B`` the kernel's output-dim spec.

Why not qwix: qwix 0.1.8 (PyPI, needs flax >= 0.12) implements LoRA by intercepting
``jnp.dot`` / ``einsum`` / ``lax.dot_general`` inside module methods while tracing the model with
example inputs, and names adapters ``kernel_lora_a`` on the intercepted module. It is not a
dependency of this project, its interception would have to cover ``Decoder.hidden`` (not only
``__call__``), and it offers no merge-for-export or base-only switch for NNX; this wrapper is
explicit and about a hundred lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from toolrl_jax.errors import ConfigError
from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder, Linear
from toolrl_jax.models.export import export_hf_dir
from toolrl_jax.models.sharding import param_partition_specs

LoRAParam = nnx.LoRAParam
#: Filter of the frozen base weights (every Param that is not an adapter).
BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(LoRAParam))
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
ALL_TARGETS = ATTENTION_TARGETS + MLP_TARGETS
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Adapter settings (the YAML ``lora:`` section of the training config).

    Attributes:
      enabled: train adapters instead of the full model (off by default). The trainer then
        wraps ``targets`` after loading the model, gives only ``A`` and ``B`` to the optimizer,
        keeps the base frozen and takes the KL reference from the base (adapters off).
      rank: ``r``.
      alpha: scale numerator; the adapter output is multiplied by ``alpha / r``.
      targets: projection names to wrap (subset of q/k/v/o_proj, gate/up/down_proj).
      base_dtype: store the frozen base weights in this dtype (e.g. ``bfloat16``), or None.
      adapter_dtype: dtype of ``A`` and ``B`` (float32 master weights).
    """

    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_TARGETS
    base_dtype: str | None = None
    adapter_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank: must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha: must be > 0, got {self.alpha}")
        unknown = sorted(set(self.targets) - set(ALL_TARGETS))
        if unknown or not self.targets:
            raise ConfigError(
                f"lora.targets: {unknown or 'empty'} not allowed; "
                f"use a subset of {list(ALL_TARGETS)}"
            )
        if self.base_dtype not in (None,) + FLOAT_DTYPES:
            raise ConfigError(f"lora.base_dtype: {self.base_dtype!r} is not null or one of "
                              f"{list(FLOAT_DTYPES)}")
        if self.adapter_dtype not in FLOAT_DTYPES:
            raise ConfigError(f"lora.adapter_dtype: {self.adapter_dtype!r} is not one of "
                              f"{list(FLOAT_DTYPES)}")

    @property
    def scale(self) -> float:
        return float(self.alpha) / float(self.rank)


class LoRALinear(Linear):
    """A :class:`Linear` with a low-rank adapter; takes over ``base``'s kernel and bias."""

    def __init__(self, base: Linear, config: LoRAConfig, *, rngs: nnx.Rngs):
        self.dtype = base.dtype
        self.kernel = base.kernel
        self.bias = base.bias
        d_in, d_out = base.kernel.get_value().shape
        adtype = jnp.dtype(config.adapter_dtype)
        bound = 1.0 / np.sqrt(d_in)
        a = jax.random.uniform(rngs.params(), (d_in, config.rank), adtype, -bound, bound)
        self.lora_a = LoRAParam(a)
        self.lora_b = LoRAParam(jnp.zeros((config.rank, d_out), adtype))
        self.scale = config.scale
        self.adapters_enabled = True

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        if not self.adapters_enabled:
            return y
        xa = jnp.dot(x.astype(self.dtype), self.lora_a[...].astype(self.dtype))
        return y + self.scale * jnp.dot(xa, self.lora_b[...].astype(self.dtype))

    def merged_kernel(self) -> jax.Array:
        """``W + scale * A B`` in float32 (``[in, out]``)."""
        f32 = jnp.float32
        delta = jnp.dot(self.lora_a[...].astype(f32), self.lora_b[...].astype(f32),
                        precision=jax.lax.Precision.HIGHEST)
        return self.kernel[...].astype(f32) + self.scale * delta


def _owners(model: Decoder, targets) -> Iterator[tuple[Any, str]]:
    for block in model.layers:
        for owner in (block.self_attn, block.mlp):
            for name in targets:
                if hasattr(owner, name):
                    yield owner, name


def apply_lora(model: Decoder, config: LoRAConfig, *, rngs: nnx.Rngs) -> Decoder:
    """Wraps ``config.targets`` of every block in :class:`LoRALinear` (in place; returns it)."""
    for owner, name in _owners(model, config.targets):
        layer = getattr(owner, name)
        if not isinstance(layer, LoRALinear):
            setattr(owner, name, LoRALinear(layer, config, rngs=rngs))
    if config.base_dtype is not None:
        dtype = jnp.dtype(config.base_dtype)
        for _, var in nnx.iter_graph(model):
            if isinstance(var, nnx.Param) and not isinstance(var, LoRAParam):
                var.set_value(var.get_value().astype(dtype))
    return model


def lora_layers(model: Decoder) -> list[tuple[tuple, LoRALinear]]:
    """``(path, layer)`` of every :class:`LoRALinear` in the model."""
    return [(tuple(p), m) for p, m in nnx.iter_graph(model) if isinstance(m, LoRALinear)]


def set_adapters_enabled(model: Decoder, enabled: bool) -> None:
    """Switch the adapter path of every wrapped layer on or off (static: changes the graphdef)."""
    for _, layer in lora_layers(model):
        layer.adapters_enabled = bool(enabled)


@contextlib.contextmanager
def adapters_disabled(model: Decoder) -> Iterator[Decoder]:
    """``with adapters_disabled(model): ...`` runs (or splits) the base model: the reference
    policy of LoRA training, sharing the base weights."""
    set_adapters_enabled(model, False)
    try:
        yield model
    finally:
        set_adapters_enabled(model, True)


def reference_graphdef(model: Decoder) -> nnx.GraphDef:
    """The graphdef of ``model`` with adapters off; ``nnx.merge`` it with the same state to get
    reference log-probs without a second copy of the weights."""
    with adapters_disabled(model):
        graphdef, _ = nnx.split(model)
    return graphdef


def split_lora(model: Decoder) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
    """``(graphdef, adapters, base, rest)``: train ``adapters`` (the only optimizer state),
    keep ``base`` frozen; ``nnx.merge(graphdef, adapters, base, rest)`` rebuilds the model."""
    return nnx.split(model, LoRAParam, BASE_PARAMS, ...)


def split_adapters(model: Decoder) -> tuple[nnx.GraphDef, dict, dict]:
    """``(graphdef, adapters, base)`` as plain nested dicts (layers keyed by int), the layout
    of :func:`toolrl_jax.rl.train_step.split_model`: train ``adapters``, pass ``base`` as the
    frozen argument; ``nnx.merge(graphdef, adapters, base)`` rebuilds the model."""
    graphdef, adapters, base = nnx.split(model, LoRAParam, BASE_PARAMS)
    return graphdef, nnx.to_pure_dict(adapters), nnx.to_pure_dict(base)


def merge_lora(model: Decoder) -> dict[tuple, jax.Array]:
    """Decoder param path -> merged value (``W + (alpha/r) A B`` in float32 for wrapped
    kernels, the base weights elsewhere); the keys are exactly a plain Decoder's params."""
    out = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and not isinstance(var, LoRAParam):
            out[tuple(path)] = var.get_value()
    for path, layer in lora_layers(model):
        out[path + ("kernel",)] = layer.merged_kernel()
    return out


def merged_decoder(model: Decoder) -> Decoder:
    """A plain :class:`Decoder` holding the merged weights (no adapters)."""
    merged = merge_lora(model)
    config = model.config
    plain = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    for path, var in nnx.iter_graph(plain):
        if isinstance(var, nnx.Param):
            var.set_value(merged[tuple(path)])
    return plain


def export_merged(
    model: Decoder, out_dir: str | pathlib.Path, **export_kwargs: Any
) -> pathlib.Path:
    """Merge the adapters and write an HF directory with
    :func:`toolrl_jax.models.export.export_hf_dir` (same keyword arguments)."""
    return export_hf_dir(merged_decoder(model), model.config, out_dir, **export_kwargs)


def adapter_specs(kernel_specs: dict[tuple, P], targets=ALL_TARGETS) -> dict[tuple, P]:
    """Adapter path -> spec derived from the kernels' specs (``path -> spec`` as
    :func:`~toolrl_jax.models.sharding.param_partition_specs` gives): ``A`` = (kernel's
    input-dim axes, None), ``B`` = (None, kernel's output-dim axes)."""
    out = {}
    for path, spec in kernel_specs.items():
        if path[-1] != "kernel" or len(path) < 2 or path[-2] not in targets:
            continue
        dims = tuple(spec) + (None,) * (2 - len(spec))
        out[path[:-1] + ("lora_a",)] = P(dims[0], None) if dims[0] is not None else P()
        out[path[:-1] + ("lora_b",)] = P(None, dims[1]) if dims[1] is not None else P()
    return out


def lora_partition_specs(
    model_config: ModelConfig, config: LoRAConfig, *, mesh: Mesh | None = None
) -> dict[tuple, P]:
    """Adapter path -> spec (:func:`adapter_specs` of the base rules); merge with
    :func:`toolrl_jax.models.sharding.param_partition_specs`."""
    return adapter_specs(param_partition_specs(model_config, mesh=mesh), config.targets)


def shard_lora_model(model: Decoder, config: LoRAConfig, mesh: Mesh) -> None:
    """Place every parameter (base and adapters) on its NamedSharding (in place)."""
    specs = dict(param_partition_specs(model.config, mesh=mesh))
    specs.update(lora_partition_specs(model.config, config, mesh=mesh))
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            key = tuple(int(k) if isinstance(k, (int, np.integer)) else k for k in path)
            var.set_value(jax.device_put(var.get_value(), NamedSharding(mesh, specs[key])))
