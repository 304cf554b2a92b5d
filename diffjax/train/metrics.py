"""Run outputs: ``metrics.jsonl`` and TensorBoard event files (the progress line with steps/s and
ETA is ``diffjax.runtime.Progress``, shared with scoring, generation and feature extraction).

Only process 0 writes (``MetricsWriter(..., active=jax.process_index() == 0)``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import numpy as np


def to_jsonable(x: Any) -> Any:
    """numpy / jax scalars and arrays -> Python floats / ints / lists (NaN kept as float('nan'))."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (str, bool, type(None))):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x
    arr = np.asarray(x)
    if arr.ndim == 0:
        v = arr.item()
        return v
    return arr.tolist()


class MetricsWriter:
    """Appends ``{"step": s, **scalars}`` lines to ``workdir/metrics.jsonl`` and writes the same
    scalars to TensorBoard under ``workdir/tensorboard``. Safe to reopen on resume (appends)."""

    def __init__(self, workdir: str, *, active: bool = True, tensorboard: bool = True):
        self.active = active
        self._tb = None
        self._f = None
        if not active:
            return
        os.makedirs(workdir, exist_ok=True)
        self._f = open(os.path.join(workdir, "metrics.jsonl"), "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def drop_after(self, step: int) -> None:
        """Removes rows with ``step`` > ``step`` (left by a run killed after its last checkpoint),
        so a resumed run's metrics.jsonl has each step once."""
        if not self.active:
            return
        self._f.close()
        path = self._f.name
        rows = [json.dumps(r) + "\n" for r in _read_rows(path) if r.get("step", 0) <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(rows)
        os.replace(path + ".tmp", path)
        self._f = open(path, "a")

    def write(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> None:
        if not self.active:
            return
        row = {"step": int(step)}
        for k, v in scalars.items():
            v = to_jsonable(v)
            row[prefix + k] = v
            if self._tb is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(prefix + k, v, int(step))
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._f is not None:
            self._f.close()
            self._f = None


def _read_rows(path: str) -> list[dict]:
    """Rows of a metrics.jsonl. A torn *last* line (a crash mid-write) is dropped with a warning;
    an unreadable line elsewhere is an error naming the file and line."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                print(f"warning: dropped a torn last line of {path} (a run stopped mid-write): {line[:80]!r}",
                      file=sys.stderr, flush=True)
                break
            raise ValueError(f"{path} line {i + 1} is not JSON ({e}); fix or delete that line") from e
    return rows


def read_metrics(workdir: str) -> list[dict]:
    """All rows of ``workdir/metrics.jsonl`` (a torn last line is dropped with a warning; [] when absent)."""
    path = os.path.join(workdir, "metrics.jsonl")
    return _read_rows(path) if os.path.isfile(path) else []
