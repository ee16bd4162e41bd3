"""Run metrics: JSON lines always, plus TensorBoard / Weights & Biases writers; PNG curves.

Every step appends one JSON object to ``RUN_DIR/metrics.jsonl`` (flushed, so nothing is lost
on a crash). The other writers are chosen by ``metrics.writers`` (YAML) and live in the
:data:`WRITERS` registry:

* ``jsonl`` - always on (listing it is allowed, leaving it out does not disable it).
* ``tensorboard`` - TensorBoard event files under ``RUN_DIR/tensorboard/``, written by a small
  writer of our own (TFRecord framing + hand-encoded ``Event`` protos), so it needs neither
  torch nor TensorFlow nor tensorboardX; ``tensorboard --logdir RUN_DIR`` reads them.
* ``wandb`` - Weights & Biases (``mode: offline`` by default, so nothing leaves the machine
  unless ``metrics.wandb_mode: online``); needs ``pip install wandb``.

A requested writer whose package is missing prints one line saying so and how to install it
(``metrics.on_missing: warn``, the default) or stops the run (``on_missing: error``); it is
never silently off.

On resume from the checkpoint at step ``s`` the trainer calls
:meth:`MetricsLogger.resume_at` ``(s)``: records logged after that checkpoint (``step > s``, and
end-of-run kinds such as ``eval_final``) are dropped from ``metrics.jsonl`` and TensorBoard is
told to purge them, so a resumed run has one record per (step, kind). ``plot_run(RUN_DIR)``
reads the file back and writes one PNG per record kind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

import numpy as np

from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.registry import Registry

try:  # optional: Weights & Biases
    import wandb
except ImportError:  # pragma: no cover - depends on the environment
    wandb = None

__all__ = [
    "MetricsConfig",
    "MetricsLogger",
    "WRITERS",
    "WriterUnavailable",
    "TensorBoardEventWriter",
    "read_metrics",
    "plot_run",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Where run metrics go (YAML section ``metrics``).

    Attributes:
      writers: names in :data:`WRITERS` (``jsonl``, ``tensorboard``, ``wandb``); jsonl is
        always written.
      tensorboard_dir: event-file directory, relative to the run directory.
      wandb_project: W&B project name.
      wandb_mode: ``offline`` (default: a local run directory, sync later with
        ``wandb sync``), ``online`` or ``disabled``.
      wandb_name: W&B run name ('' = the run directory's name).
      wandb_dir: where W&B writes its files ('' = the run directory).
      on_missing: ``warn`` (one line on stderr, the run goes on) or ``error`` (ConfigError)
        when a requested writer's package is not installed.
    """

    writers: tuple[str, ...] = ("jsonl", "tensorboard")
    tensorboard_dir: str = "tensorboard"
    wandb_project: str = "toolrl-jax"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_name: str = ""
    wandb_dir: str = ""
    on_missing: Literal["warn", "error"] = "warn"

    def __post_init__(self):
        for name in self.writers:
            WRITERS.get(name)  # ConfigError naming metrics.writers and the registered names
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ConfigError(
                f"metrics.wandb_mode={self.wandb_mode!r}: use offline, online or disabled")
        if self.on_missing not in ("warn", "error"):
            raise ConfigError(f"metrics.on_missing={self.on_missing!r}: use warn or error")


class WriterUnavailable(Exception):
    """A requested writer cannot be built (its package is missing); the message says the fix."""


class ScalarWriter(Protocol):
    """One destination of scalar metrics."""

    def write(self, step: int, kind: str, scalars: Mapping[str, float]) -> None: ...

    def resume_at(self, step: int) -> None: ...

    def close(self) -> None: ...


WriterBuilder = Callable[[pathlib.Path, MetricsConfig], ScalarWriter]
WRITERS: Registry[WriterBuilder] = Registry("metrics writer", config_key="metrics.writers")


# --------------------------------------------------------------------------- values


def _to_py(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        value = arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_py(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_py(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def _scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric, non-bool fields of a record except ``step``; nested mappings become
    ``outer/inner`` names."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, Mapping):
            out.update(_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and (prefix or k != "step"):
            out[f"{prefix}{k}"] = float(v)
    return out


# --------------------------------------------------------------------------- jsonl


class JsonlWriter:
    """``RUN_DIR/metrics.jsonl``: one JSON object per :meth:`MetricsLogger.log` call."""

    def __init__(self, run_dir: pathlib.Path):
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)

    def write_record(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=False) + "\n")

    def write(self, step: int, kind: str, scalars: Mapping[str, float]) -> None:
        self.write_record({"step": int(step), "kind": kind, **scalars})

    def resume_at(self, step: int, drop_kinds: Iterable[str] = ()) -> int:
        """Rewrites the file keeping records with ``step <= step`` whose kind is not in
        ``drop_kinds`` (a torn last line is dropped too); returns how many were removed."""
        self._file.close()
        drop = set(drop_kinds)
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(rec.get("step", 0)) <= step and rec.get("kind", "train") not in drop:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", buffering=1)
        return len(lines) - len(kept)

    def close(self) -> None:
        self._file.close()


WRITERS.register("jsonl")(lambda run_dir, config: JsonlWriter(run_dir))


# --------------------------------------------------------------------------- tensorboard
#
# An event file is a sequence of TFRecords: uint64 length, uint32 masked CRC-32C of the length
# bytes, the payload, uint32 masked CRC-32C of the payload (little-endian). Each payload is a
# serialized tensorflow.Event proto; we encode the few fields we need by hand:
#   Event   {1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary,
#            7: session_log SessionLog}
#   Summary {1: repeated Value};  Value {1: tag string, 2: simple_value float}
#   SessionLog {1: status enum, START = 1}: TensorBoard drops earlier events with step >= it.


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _float32(value: float) -> float:
    """``value`` as float32 would hold it (beyond its range: +-inf, which TensorBoard shows)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _event(step: int, *, summary: Mapping[str, float] | None = None,
           file_version: str | None = None, session_start: bool = False) -> bytes:
    out = bytearray(b"\x09" + struct.pack("<d", time.time()))
    out += b"\x10" + _varint(int(step))
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if summary is not None:
        values = b"".join(
            _len_field(1, _len_field(1, tag.encode()) + b"\x15" + struct.pack("<f", _float32(value)))
            for tag, value in summary.items())
        out += _len_field(5, values)
    if session_start:
        out += _len_field(7, b"\x08\x01")
    return bytes(out)


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord frame around ``payload``."""
    header = struct.pack("<Q", len(payload))
    return (header + struct.pack("<I", _masked_crc(header)) + payload
            + struct.pack("<I", _masked_crc(payload)))


class TensorBoardEventWriter:
    """Scalars as TensorBoard event files, with no torch / TensorFlow / tensorboardX.

    Tags are ``KIND/NAME`` (``train/reward``, ``eval/accuracy``). Each logger opens a new file
    ``events.out.tfevents.<time>.<host>.<pid>.<n>`` in ``directory``.
    """

    _opened = 0

    def __init__(self, directory: str | pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        TensorBoardEventWriter._opened += 1
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
                f".{os.getpid()}.{TensorBoardEventWriter._opened}")
        self.path = self.directory / name
        self._file = open(self.path, "ab")
        self._put(_event(0, file_version="brain.Event:2"))

    def _put(self, payload: bytes) -> None:
        self._file.write(tfrecord(payload))
        self._file.flush()

    def write(self, step: int, kind: str, scalars: Mapping[str, float]) -> None:
        finite = {f"{kind}/{k}": v for k, v in scalars.items() if math.isfinite(v)}
        if finite:
            self._put(_event(step, summary=finite))

    def resume_at(self, step: int) -> None:
        """Marks a restart after ``step``: TensorBoard purges earlier events at later steps."""
        self._put(_event(step + 1, session_start=True))

    def close(self) -> None:
        self._file.close()


WRITERS.register("tensorboard")(
    lambda run_dir, config: TensorBoardEventWriter(run_dir / config.tensorboard_dir))


# --------------------------------------------------------------------------- wandb


class WandbWriter:
    """Weights & Biases run (offline by default); tags ``KIND/NAME`` at W&B step ``step``."""

    def __init__(self, run_dir: pathlib.Path, config: MetricsConfig):
        if wandb is None:
            raise WriterUnavailable(
                "metrics writer 'wandb' needs the wandb package: pip install wandb "
                "(or drop it from metrics.writers)")
        self._run = wandb.init(
            project=config.wandb_project,
            name=config.wandb_name or run_dir.name,
            dir=str(config.wandb_dir or run_dir),
            mode=config.wandb_mode,
            reinit=True,
        )
        self._last_step = -1

    def write(self, step: int, kind: str, scalars: Mapping[str, float]) -> None:
        step = max(int(step), self._last_step)  # W&B steps must not go back
        self._last_step = step
        self._run.log({f"{kind}/{k}": v for k, v in scalars.items()}, step=step)

    def resume_at(self, step: int) -> None:
        pass  # a resumed process is a new W&B run

    def close(self) -> None:
        self._run.finish()


WRITERS.register("wandb")(WandbWriter)


# --------------------------------------------------------------------------- logger


def _warn(message: str) -> None:
    print(f"toolrl-jax: warning: {message}", file=sys.stderr)


class MetricsLogger:
    """Appends per-step metrics to ``metrics.jsonl`` and to the configured writers.

    Args:
      run_dir: the run directory (created if missing).
      tensorboard: ``False`` removes ``tensorboard`` from the writers (older keyword).
      config: a :class:`MetricsConfig` (default: jsonl + tensorboard).
    """

    def __init__(self, run_dir: str | pathlib.Path, *, tensorboard: bool = True,
                 config: MetricsConfig | None = None):
        config = config or MetricsConfig()
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = JsonlWriter(self.run_dir)
        self.path = self._jsonl.path
        self.writers: dict[str, ScalarWriter] = {}
        for name in dict.fromkeys(config.writers):
            if name == "jsonl" or (name == "tensorboard" and not tensorboard):
                continue
            try:
                self.writers[name] = WRITERS.get(name)(self.run_dir, config)
            except WriterUnavailable as e:
                if config.on_missing == "error":
                    raise ConfigError(str(e)) from None
                _warn(f"{e}; continuing without it")

    def log(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train") -> dict:
        """Writes one record ``{"step", "kind", **metrics}`` (NaN -> null) and returns it."""
        record = {"step": int(step), "kind": kind}
        record.update({k: _to_py(v) for k, v in metrics.items() if k not in record})
        self._jsonl.write_record(record)
        scalars = _scalars(record)
        for writer in self.writers.values():
            writer.write(int(step), kind, scalars)
        return record

    def resume_at(self, step: int, *, drop_kinds: Iterable[str] = ("eval_final",)) -> int:
        """Forgets what was logged after the checkpoint at ``step`` (``step > step`` and the
        end-of-run ``drop_kinds``), so the resumed run logs each (step, kind) once.

        Returns:
          The number of ``metrics.jsonl`` records removed.
        """
        removed = self._jsonl.resume_at(int(step), drop_kinds)
        for writer in self.writers.values():
            writer.resume_at(int(step))
        return removed

    def close(self) -> None:
        self._jsonl.close()
        for writer in self.writers.values():
            writer.close()


def read_metrics(run_dir: str | pathlib.Path) -> list[dict]:
    """Reads ``metrics.jsonl``; a truncated last line (crash mid-write) is ignored, and of
    records with the same (step, kind) only the last is kept (in the position of the first)."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    records: dict[tuple[int, str], dict] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records[(rec.get("step"), rec.get("kind", "train"))] = rec
    return list(records.values())


def plot_run(run_dir: str | pathlib.Path, out_dir: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """Writes PNG curves (one figure per record kind, one panel per numeric metric)."""
    import matplotlib  # lazy: optional dependency; the backend must be set before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = pathlib.Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise DataError(f"no metrics in {run_dir / 'metrics.jsonl'}: is this a run directory?")
    out = pathlib.Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in sorted({r.get("kind", "train") for r in records}):
        rows = [r for r in records if r.get("kind", "train") == kind]
        keys = sorted({k for r in rows for k in _scalars(r) if "/" not in k})
        if not keys:
            continue
        cols = min(4, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout()
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
