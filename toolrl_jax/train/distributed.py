"""Several processes (multi-host): who rolls out what, small all-gathers, local weight copies.

The trainer runs the same program on every process (``toolrl-jax train ...`` on each host).
A step's prompts (``draw_prompts``) are global and split into ``S`` *shares* (``S`` =
``train.rollout_shards``, default the process count ``P``); share ``s`` holds whole groups
``[s*G/S, (s+1)*G/S)`` and is rolled out with its own seed, a pure function of
``(step, round, s)``. Process ``p`` owns shares ``[p*S/P, (p+1)*S/P)``, so a single process with
``S = P`` rolls out exactly what ``P`` processes do. Per-row results (rewards, lengths) are
small and all-gathered (:func:`gather_rows`), so advantages and metrics are computed on the
global batch by every process; the model's rows stay where they were generated and become the
process-local part of the global batch (``jax.make_array_from_process_local_data``).

The rollout mesh (:func:`rollout_mesh`, config ``rollout.mesh``) may differ from the training
mesh, e.g. ``fsdp`` for the update and ``data`` x ``tp`` for decoding; on one process the trainer
moves the weights to it with ``jax.device_put`` (device to device, never through a host).
With several processes rollouts run on each process's own devices (host-driven decoding only
ever fetches arrays it owns): :func:`to_local` copies the training weights (global arrays on
the training mesh) onto a process-local mesh with ``jax.device_put`` after, where a weight is
sharded across processes, a jitted all-gather over the devices (never through a host).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from toolrl_jax.errors import ConfigError
from toolrl_jax.models.sharding import MeshConfig, make_mesh

SHARE_SEED_STRIDE = 2_654_435_761  # odd (Knuth's multiplicative hash): shares do not collide


@dataclasses.dataclass(frozen=True)
class Shares:
    """The rollout shares of this process.

    Attributes:
      num_shares: ``S``, shares per step (all processes).
      process_index, process_count: ``p`` and ``P``.
    """

    num_shares: int
    process_index: int = 0
    process_count: int = 1

    @classmethod
    def create(cls, num_shares: int, prompts_per_step: int) -> Shares:
        """``num_shares`` (0 = one per process) checked against the processes and prompts."""
        count = jax.process_count()
        shares = int(num_shares) or count
        if shares % count:
            raise ConfigError(f"train.rollout_shards={shares} must be a multiple of the "
                              f"{count} processes (or 0 = one per process)")
        if prompts_per_step % shares:
            raise ConfigError(f"rollout.prompts_per_step={prompts_per_step} must be divisible by "
                              f"the {shares} rollout shares (train.rollout_shards / processes); "
                              "groups are never split")
        return cls(shares, jax.process_index(), count)

    @property
    def primary(self) -> bool:
        """Process 0 writes the run's files (metrics, summaries, plots, samples, config)."""
        return self.process_index == 0

    @property
    def mine(self) -> range:
        """Share indices of this process."""
        per = self.num_shares // self.process_count
        return range(self.process_index * per, (self.process_index + 1) * per)

    def prompts(self, task_indices: np.ndarray, share: int) -> np.ndarray:
        """Task indices of ``share`` (whole groups, in order)."""
        per = len(task_indices) // self.num_shares
        return task_indices[share * per:(share + 1) * per]


def share_seed(base_seed: int, share: int) -> int:
    """Rollout seed of ``share`` in a round whose share-0 seed is ``base_seed`` (share 0 keeps
    it: a one-share run is unchanged)."""
    if share == 0:
        return int(base_seed)
    return int((base_seed + share * SHARE_SEED_STRIDE) % (2**31 - 1))


def gather_rows(tree: Any) -> Any:
    """Every process's rows of each (numpy) leaf, concatenated in process order (identity with
    one process). Leaves must have the same shape on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    out = multihost_utils.process_allgather(jax.tree.map(np.asarray, tree), tiled=True)
    return jax.tree.map(np.asarray, out)


def global_max(value: int) -> int:
    """The largest ``value`` over processes."""
    return int(np.max(gather_rows(np.asarray([value], np.int64))))


def barrier(name: str) -> None:
    """All processes wait here (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def local_mesh(tp: int) -> Mesh:
    """This process's devices as a ``('data', 'fsdp', 'tp')`` mesh: KV heads over ``tp``
    (must fit on one process), slots over the rest."""
    devices = jax.local_devices()
    if len(devices) % tp:
        raise ConfigError(f"mesh.tp={tp} must divide the {len(devices)} devices of one process "
                          "(rollouts run on each process's own devices)")
    return Mesh(np.asarray(devices, dtype=object).reshape(len(devices) // tp, 1, tp),
                ("data", "fsdp", "tp"))


def rollout_mesh(config: MeshConfig | None, train_mesh: Mesh | None) -> Mesh | None:
    """The mesh rollouts run on: ``config`` (``rollout.mesh``) over all devices on one process,
    over this process's devices with several; None: the training mesh on one process,
    :func:`local_mesh` with the training mesh's ``tp`` with several. No mesh on one device."""
    if train_mesh is None:
        return None
    local = jax.process_count() > 1
    if config is None:
        return local_mesh(int(train_mesh.shape["tp"])) if local else train_mesh
    devices = jax.local_devices() if local else None
    try:
        return make_mesh(config, devices=devices)
    except ConfigError as e:
        where = f"the {len(devices)} devices of one process" if local else "all devices"
        raise ConfigError(f"rollout.{e} (rollout.mesh spans {where})") from None


def _replicate_fn(mesh: Mesh):
    return jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))


def to_local(tree: Any, shardings: Any) -> Any:
    """Global arrays of ``tree`` as process-local arrays on ``shardings`` (a tree of
    NamedShardings on a :func:`local_mesh`). A leaf sharded across processes is first
    all-gathered on device (every process must call this together)."""

    def one(x, sh):
        if not isinstance(x, jax.Array):
            return jax.device_put(x, sh)
        if not x.is_fully_addressable and not x.is_fully_replicated:
            x = _replicate_fn(x.sharding.mesh)(x)
        if not x.is_fully_addressable:
            x = x.addressable_data(0)
        return jax.device_put(x, sh)

    return jax.tree.map(one, tree, shardings)
