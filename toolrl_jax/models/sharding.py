"""Device mesh and sharding rules for the decoder (rules are data, next to the model).

One ``jax.sharding.Mesh`` with axes ``('data', 'fsdp', 'tp')``:

* ``data``: pure data parallelism (params replicated across it).
* ``fsdp``: data parallelism with parameters sharded (ZeRO-3 style; XLA all-gathers them).
* ``tp``: tensor parallelism (attention heads / MLP hidden units / vocab).

Parameter PartitionSpecs (``param_partition_specs``)::

    embed_tokens.embedding [V, D]     P('tp', 'fsdp')
    q/k/v_proj.kernel      [D, H*Dh]  P('fsdp', 'tp')    q/k/v_proj.bias [H*Dh]  P('tp')
    o_proj.kernel          [H*Dh, D]  P('tp', 'fsdp')    o_proj.bias     [D]     P()
    gate/up_proj.kernel    [D, F]     P('fsdp', 'tp')
    down_proj.kernel       [F, D]     P('tp', 'fsdp')
    lm_head.kernel         [D, V]     P('fsdp', 'tp')
    norms (scale)                     P()

Divisibility fallback: given a mesh, a dimension whose size is not divisible by its mesh
axis size is replicated instead (that entry of the spec becomes ``None``), e.g. a vocab of
49152 on tp=5. Batches ``[B, ...]`` are split over ``('data', 'fsdp')``
(:func:`batch_partition_spec`); the KV cache ``[L, B, S, KVH, Dh]`` over batch and KV heads
(:func:`cache_partition_spec`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from toolrl_jax.errors import ConfigError
from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.hf_mapping import param_shapes
from toolrl_jax.models.params import param_variables

MESH_AXES = ("data", "fsdp", "tp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Mesh axis sizes; exactly one may be -1 meaning 'all remaining devices'."""

    data: int = -1
    fsdp: int = 1
    tp: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tp]
        for name, s in zip(MESH_AXES, sizes):
            if not isinstance(s, (int, np.integer)) or (s < 1 and s != -1):
                raise ConfigError(f"mesh.{name}={s!r}: use a positive int or -1 (= the rest)")
        if sizes.count(-1) > 1:
            raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
        known = int(np.prod([s for s in sizes if s != -1]))
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(
                    f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                    f"divisible by the fixed axes' product {known}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if int(np.prod(sizes)) != num_devices:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: product {int(np.prod(sizes))} != "
                f"{num_devices} devices; make data*fsdp*tp equal the device count or set one "
                "axis to -1"
            )
        return tuple(int(s) for s in sizes)  # type: ignore[return-value]


def make_mesh(
    cfg: MeshConfig | Mapping[str, int] | None = None, devices: Sequence[Any] | None = None
) -> Mesh:
    """A ``Mesh`` with axes ``('data', 'fsdp', 'tp')`` over ``devices`` (default: all).

    Uses ``mesh_utils.create_device_mesh`` (topology-aware on TPU/GPU) when the devices are
    all of ``jax.devices()``, else a plain reshape of the given list.

    Raises:
      ConfigError: unknown axis name, or the axis product does not match the device count.
    """
    if cfg is None:
        cfg = MeshConfig()
    elif isinstance(cfg, Mapping):
        unknown = set(cfg) - set(MESH_AXES)
        if unknown:
            raise ConfigError(f"mesh: unknown axes {sorted(unknown)}; use {list(MESH_AXES)}")
        cfg = MeshConfig(**{k: int(v) for k, v in cfg.items()})
    all_devices = list(jax.devices())
    devs = list(devices) if devices is not None else all_devices
    shape = cfg.resolve(len(devs))
    arr = None
    if devices is None:
        try:
            arr = mesh_utils.create_device_mesh(shape, devs, allow_split_physical_axes=True)
        except Exception:  # topology helper refuses some shapes: fall back to a reshape
            arr = None
    if arr is None:
        arr = np.asarray(devs, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES)


def _rule(path: tuple) -> P:
    """Logical spec of one parameter path (before the divisibility fallback)."""
    leaf = path[-1]
    owner = path[-2] if len(path) >= 2 else ""
    if path == ("embed_tokens", "embedding"):
        return P("tp", "fsdp")
    if path == ("lm_head", "kernel"):
        return P("fsdp", "tp")
    if leaf == "scale":
        return P()
    if owner in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
        return P("fsdp", "tp") if leaf == "kernel" else P("tp")
    if owner in ("o_proj", "down_proj"):
        return P("tp", "fsdp") if leaf == "kernel" else P()
    raise ValueError(f"no sharding rule for parameter {path!r}")


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh | None) -> P:
    """Replicate any dim whose size is not divisible by its mesh axes' size."""
    if mesh is None:
        return spec
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = int(np.prod([mesh.shape[a] for a in names]))
        out.append(axes if dim % size == 0 else None)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def param_partition_specs(
    config: ModelConfig, *, mesh: Mesh | None = None
) -> dict[tuple, P]:
    """nnx param path (e.g. ``('layers', 0, 'mlp', 'up_proj', 'kernel')``) -> PartitionSpec.

    With ``mesh``, non-divisible dims fall back to replication (see module docstring).
    """
    return {
        path: _fit(_rule(path), shape, mesh) for path, shape in param_shapes(config).items()
    }


def _norm_path(path: Sequence[Any]) -> tuple:
    out = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                k = getattr(k, attr)
                break
        out.append(int(k) if isinstance(k, (int, np.integer)) else k)
    return tuple(out)


def param_shardings(state: Any, config: ModelConfig, mesh: Mesh) -> Any:
    """A pytree like ``state`` (an ``nnx.State`` of the model's params) of NamedShardings."""
    specs = param_partition_specs(config, mesh=mesh)

    def one(path, leaf):
        p = _norm_path(path)
        if p and p[-1] == "value":  # Variable leaves flattened to their value
            p = p[:-1]
        spec = specs.get(p, P())
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, state)


def shard_model(model: nnx.Module, mesh: Mesh) -> None:
    """Move every parameter of ``model`` onto its NamedSharding on ``mesh`` (in place)."""
    specs = param_partition_specs(model.config, mesh=mesh)
    for path, var in param_variables(model):
        var.set_value(jax.device_put(var.get_value(), NamedSharding(mesh, specs[path])))


def batch_partition_spec() -> P:
    """Spec for batch-major arrays ``[B, ...]``: batch split over ('data', 'fsdp')."""
    return P(("data", "fsdp"))


def cache_partition_spec() -> P:
    """Spec for KV cache k/v ``[L, B, S, KVH, Dh]``: batch over ('data','fsdp'), heads on tp.

    ``KVCache.pos [B, S]`` uses :func:`batch_partition_spec`. Use :func:`fit_spec` with the
    cache shape when KVH may not divide by tp.
    """
    return P(None, ("data", "fsdp"), None, "tp", None)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Apply the divisibility fallback of this module to any spec / shape."""
    return _fit(spec, tuple(shape), mesh)


def _multi_host_env() -> str | None:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("JAX_NUM_PROCESSES", "1") or 1) > 1:
        return "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "SLURM"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "Open MPI"
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS")
    if hosts and (env.get("MEGASCALE_COORDINATOR_ADDRESS") or len(hosts.split(",")) > 1):
        return "TPU pod"
    return None


def initialize_distributed_if_needed() -> bool:
    """Call ``jax.distributed.initialize()`` when this process is part of a multi-host job.

    Detected from the environment: ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``; all read by JAX itself), ``SLURM_JOB_ID`` with ``SLURM_NTASKS > 1``,
    Open MPI (``OMPI_COMM_WORLD_SIZE > 1``), or a multi-host TPU pod
    (``TPU_WORKER_HOSTNAMES`` with several hosts / ``MEGASCALE_COORDINATOR_ADDRESS``). JAX
    auto-detects the coordinator in the cluster cases. Otherwise (one host: CPU, one GPU,
    a single-host TPU VM) it does nothing. Must run before any other JAX call; safe to call
    twice. Returns True when the distributed runtime is (now) initialised.

    On CPU (``JAX_PLATFORMS=cpu``, e.g. ``scripts/launch_local.sh``) cross-process collectives
    need an implementation: gloo is selected (``jax_cpu_collectives_implementation``).
    """
    if jax.distributed.is_initialized():
        return True
    kind = _multi_host_env()
    if kind is None:
        return False
    kwargs: dict[str, Any] = {}
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        if env.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if env.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    if env.get("JAX_PLATFORMS", "").split(",")[0].strip() == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True
