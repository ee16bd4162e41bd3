"""Orbax checkpoints of the whole training state, with SIGTERM-safe saves and exact resume.

A checkpoint ``DIR/<step>/`` holds two items:

* ``state``: the :class:`~toolrl_jax.rl.train_step.TrainState` pytree (params, optax state,
  step, PRNG key), saved with ``ocp.args.StandardSave`` (sharded arrays are written by their
  owners; restore places every array on the sharding of the abstract target);
* ``data``: a JSON dict of the data position (epoch, next index, sampler seeds, ...), whatever
  the trainer needs so that the next batch after resume is the one it would have drawn.

Saves are asynchronous (``enable_async_checkpointing``): ``save`` returns once the arrays are
copied off the device (so the donated state can be reused by the next step) and the files are
written in a background thread; ``max_to_keep`` old checkpoints are kept. An interrupted write
leaves only a temporary directory that Orbax ignores, so a SIGKILL between checkpoints resumes
from the last complete one.

Pre-emption (TPU pods, SLURM): :class:`Checkpointer` installs a SIGTERM handler that only sets a
flag; at the next step boundary :meth:`Checkpointer.step_boundary` saves synchronously and
raises ``SystemExit(143)``. With several processes the decision is Orbax's
``reached_preemption`` (JAX's preemption sync service), so every host saves at the same step.

Resume contract: ``state, data = ckpt.restore(learner.abstract_state(params))`` returns the
state after step ``s`` and the data position saved with it; running step ``s + 1`` from there
gives bit-for-bit what the uninterrupted run computed (same params, optimizer moments, step
counter, PRNG key and batch).
"""

from __future__ import annotations

import pathlib
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # 143, the shell's code for "terminated"


class Checkpointer:
    """Save every ``save_every`` steps (and on SIGTERM), keep the last ``keep``, restore.

    Args:
      directory: checkpoint root (created).
      save_every: save when ``step % save_every == 0`` (0 = only on request / pre-emption).
      keep: number of checkpoints to keep.
      async_save: write in the background.
      handle_sigterm: install a SIGTERM handler (main thread only) that requests a save at the
        next step boundary followed by ``SystemExit(143)``. The previous handler is restored by
        :meth:`close`.
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        save_every: int = 10,
        keep: int = 3,
        async_save: bool = True,
        handle_sigterm: bool = True,
    ) -> None:
        self.directory = pathlib.Path(directory).absolute()
        self.save_every = int(save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )
        self._preempt = threading.Event()
        self._old_handler: Any = None
        if handle_sigterm and threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    # ----------------------------------------------------------------- signals
    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._preempt.set()

    def request_preemption(self) -> None:
        """Same as receiving SIGTERM: save at the next step boundary, then exit."""
        self._preempt.set()

    def preemption_requested(self, step: int) -> bool:
        """True when this process got SIGTERM (or, multi-host, any host reached pre-emption)."""
        if self._preempt.is_set():
            return True
        if jax.process_count() > 1:
            try:
                return bool(self.manager.reached_preemption(step))
            except Exception:  # no preemption sync service configured
                return False
        return False

    # ----------------------------------------------------------------- save
    def save(self, step: int, state: Any, data_position: Mapping[str, Any] | None = None,
             *, wait: bool = False) -> None:
        """Saves ``state`` and the JSON-able ``data_position`` as checkpoint ``step``."""
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(dict(data_position or {})),
            ),
            force=True,
        )
        if wait:
            self.manager.wait_until_finished()

    def step_boundary(self, step: int, state: Any, data_position: Mapping[str, Any] | None = None
                      ) -> bool:
        """Call after every optimizer step. Saves on schedule or pre-emption.

        Returns True when a checkpoint was started. After a pre-emption save it waits for the
        write to finish and raises ``SystemExit(143)``.
        """
        preempted = self.preemption_requested(step)
        scheduled = self.save_every > 0 and step % self.save_every == 0
        if not (preempted or scheduled):
            return False
        if self.manager.latest_step() != step:
            self.save(step, state, data_position)
        if preempted:
            self.manager.wait_until_finished()
            raise SystemExit(PREEMPTED_EXIT_CODE)
        return True

    # ----------------------------------------------------------------- restore
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """``(state, data_position)`` of checkpoint ``step`` (default: the latest).

        Args:
          abstract_state: a pytree of ``jax.ShapeDtypeStruct`` with shardings, e.g.
            ``Learner.abstract_state(params)``; arrays are restored onto those shardings.

        Raises:
          FileNotFoundError: there is no checkpoint.
        """
        if step is None:
            step = self.manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], dict(restored["data"] or {})

    # ----------------------------------------------------------------- close
    def wait(self) -> None:
        """Blocks until pending asynchronous writes are done."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for writes, closes the manager and restores the previous SIGTERM handler."""
        self.manager.wait_until_finished()
        self.manager.close()
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
