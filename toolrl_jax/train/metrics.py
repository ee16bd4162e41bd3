"""Run metrics: JSON lines always, TensorBoard when installed, PNG curves on demand.

Every step appends one JSON object to ``RUN_DIR/metrics.jsonl`` (flushed, so nothing is lost
on a crash). ``plot_run(RUN_DIR)`` reads it back and writes one PNG per metric group.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import numpy as np

from toolrl_jax.errors import DataError


def _to_py(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class MetricsLogger:
    """Appends per-step metrics to ``metrics.jsonl`` and, if available, TensorBoard."""

    def __init__(self, run_dir: str | pathlib.Path, *, tensorboard: bool = True):
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            try:  # optional dependency
                from torch.utils.tensorboard import SummaryWriter  # lazy: optional (torch, slow)

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self._tb = None

    def log(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train") -> dict:
        record = {"step": int(step), "kind": kind}
        record.update({k: _to_py(v) for k, v in metrics.items() if k not in record})
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        return record

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | pathlib.Path) -> list[dict]:
    """Reads ``metrics.jsonl``; a truncated last line (crash mid-write) is ignored."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    records = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


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
        keys = sorted({k for r in rows for k, v in r.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"})
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
