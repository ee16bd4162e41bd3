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

Damaged checkpoints: ``restore()`` validates what it reads (Orbax must read every array and
the data dict; every floating-point array must be finite) and, when the newest checkpoint fails,
falls back to the newest one that passes, with a one-line warning per damaged step. Damaged
steps newer than the one restored are moved to ``DIR.damaged/<step>`` (kept for inspection,
out of Orbax's rotation, so later saves can never rotate the intact checkpoint out in favour of
them). Nothing is moved or deleted when no checkpoint passes (a changed model config fails every
step the same way): ``restore`` then raises ``DataError`` listing each step's problem.

Non-finite training: ``save(..., require_finite=True)`` (and ``step_boundary``) refuse to write a
state with a NaN or infinite floating-point value and return False, so a diverged run can never
rotate its last finite checkpoints out; :func:`tree_all_finite` is the test.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from toolrl_jax.errors import DataError

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # 143, the shell's code for "terminated"


def tree_all_finite(tree: Any) -> bool:
    """True when every floating-point leaf of ``tree`` holds only finite values (no NaN/inf).

    One device reduction per leaf and a single host transfer; integer and key leaves are
    ignored.
    """
    checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
              if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)]
    return bool(jnp.all(jnp.stack(checks))) if checks else True


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
      warn: where one-line warnings go (a damaged checkpoint skipped, a non-finite state not
        saved); default: stderr.
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        save_every: int = 10,
        keep: int = 3,
        async_save: bool = True,
        handle_sigterm: bool = True,
        warn: Callable[[str], None] = _warn,
    ) -> None:
        self.directory = pathlib.Path(directory).absolute()
        self.damaged_directory = self.directory.with_name(self.directory.name + ".damaged")
        self._warn = warn
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
             *, wait: bool = False, require_finite: bool = False) -> bool:
        """Saves ``state`` and the JSON-able ``data_position`` as checkpoint ``step``.

        With ``require_finite`` a state holding NaN/inf is not written (one-line warning) and
        False is returned; otherwise True.
        """
        if require_finite and not tree_all_finite(state):
            self._warn(f"checkpoint: step {step} not saved: the state holds NaN or infinite values "
                       f"(the last finite checkpoint is step {self.manager.latest_step()})")
            return False
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
        return True

    def step_boundary(self, step: int, state: Any, data_position: Mapping[str, Any] | None = None,
                      *, require_finite: bool = False) -> bool:
        """Call after every optimizer step. Saves on schedule or pre-emption.

        Returns True when a checkpoint was started. After a pre-emption save it waits for the
        write to finish and raises ``SystemExit(143)``. ``require_finite``: see :meth:`save`.
        """
        preempted = self.preemption_requested(step)
        scheduled = self.save_every > 0 and step % self.save_every == 0
        if not (preempted or scheduled):
            return False
        saved = True
        if self.manager.latest_step() != step:
            saved = self.save(step, state, data_position, require_finite=require_finite)
        if preempted:
            self.manager.wait_until_finished()
            raise SystemExit(PREEMPTED_EXIT_CODE)
        return saved

    # ----------------------------------------------------------------- restore
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """``(state, data_position)`` of checkpoint ``step`` (default: the newest intact one).

        Args:
          abstract_state: a pytree of ``jax.ShapeDtypeStruct`` with shardings, e.g.
            ``Learner.abstract_state(params)``; arrays are restored onto those shardings.
          step: restore exactly this step (no fallback); None: the newest checkpoint that reads
            back and validates (see the module docstring), skipping damaged ones with a warning.

        Raises:
          FileNotFoundError: there is no checkpoint.
          DataError: no checkpoint (or not the requested one) reads back intact.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step is not None:
            try:
                return self._restore_valid(int(step), abstract_state)
            except Exception as exc:  # noqa: BLE001 - Orbax/tensorstore raise many kinds
                raise DataError(f"checkpoint {self.directory / str(step)} cannot be restored: "
                                f"{_one_line(exc)}") from exc
        problems: list[tuple[int, str]] = []
        for candidate in steps:
            try:
                restored = self._restore_valid(candidate, abstract_state)
            except Exception as exc:  # noqa: BLE001
                problems.append((candidate, _one_line(exc)))
                self._warn(f"checkpoint: step {candidate} is damaged ({_one_line(exc)[:160]}); "
                           "trying an older one")
                continue
            for bad, _ in problems:  # newer than an intact one: damaged, not a config change
                self._quarantine(bad)
            if problems:
                self._warn(f"checkpoint: resuming from step {candidate}, the newest intact one")
            return restored
        listing = "; ".join(f"step {s}: {why[:120]}" for s, why in problems)
        raise DataError(f"no intact checkpoint in {self.directory} ({listing}); fix the config "
                        "(a changed model no longer fits them) or set train.resume=false")

    def _restore_valid(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        state, data = restored["state"], restored["data"]
        if data is not None and not isinstance(data, Mapping):
            raise ValueError(f"data position is {type(data).__name__}, not a JSON object")
        if jax.tree.structure(state) != jax.tree.structure(abstract_state):
            raise ValueError("restored state does not have the structure of the target")
        if not tree_all_finite(state):
            raise ValueError("the state holds NaN or infinite values")
        return state, dict(data or {})

    def _quarantine(self, step: int) -> None:
        """Moves damaged step ``step`` out of the checkpoint directory (never deletes it)."""
        source = self.directory / str(step)
        if not source.exists():
            return
        self.damaged_directory.mkdir(parents=True, exist_ok=True)
        target = self.damaged_directory / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(source), str(target))
        self._warn(f"checkpoint: moved damaged step {step} to {target}")
        self.manager.reload()

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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
