"""Deploying a trained OOD detector (both OOD tasks): the saved threshold and the score rows.

At evaluation time a task fixes the flag's threshold on **held-out ID data** -- the score that
accepts 95% of it (``metrics.threshold_at_tpr``, the FPR95 convention of the table) -- and saves
it in the workdir (``threshold.json``), so that ``python -m diffjax score`` (``Task.score``) needs
no ID data: it scores the new inputs with the same t / noise draws and flags ``score > threshold``.

Rows are written as CSV (``id,score,ood``) or JSONL (``{"id", "score", "ood"}``), by the output
file's extension. Problems with the *inputs* (missing, empty, unreadable) raise ``InputError``:
one line naming the input and what was expected. It subclasses ``FileNotFoundError`` because the
CLI prints that family as one ``error:`` line (``diffjax/cli.py`` ``_user_errors``).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Sequence

import numpy as np

from diffjax.ood import metrics

THRESHOLD_FILE = "threshold.json"
ROW_FORMATS = (".csv", ".jsonl")


class InputError(FileNotFoundError):
    """An input to score or an OOD set given as a path is missing, empty or unreadable."""


def fit_threshold(heldout_id_scores: np.ndarray, tpr: float = 0.95) -> float:
    """The smallest threshold accepting (score <= threshold) at least ``tpr`` of the held-out ID scores."""
    s = np.asarray(heldout_id_scores, np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"cannot fix a threshold on {s.size} held-out ID scores (empty or non-finite)")
    return float(metrics.threshold_at_tpr(np.asarray(s, np.float32), tpr))


def save_threshold(workdir: str, *, score: str, heldout_id_scores: np.ndarray, heldout: str,
                   tpr: float = 0.95, **meta) -> dict:
    """Fits the threshold and writes ``workdir/threshold.json`` (atomically); returns its content.

    ``score``: the score name it applies to; ``heldout``: what the held-out ID data were (for the
    record); ``meta``: the scoring setup that ``score`` must reproduce (t, number of noise draws, ...).
    """
    s = np.asarray(heldout_id_scores, np.float64).reshape(-1)
    rec = {"score": score, "threshold": fit_threshold(s, tpr), "id_accepted": float(tpr),
           "heldout": heldout, "num_heldout": int(s.size),
           "heldout_accepted_fraction": float(np.mean(s <= fit_threshold(s, tpr))),
           "rule": "flag OOD when score > threshold (higher score = more OOD)", **meta}
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, THRESHOLD_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return rec


def load_threshold(workdir: str) -> dict:
    """``workdir/threshold.json`` (written by ``evaluate``); a clear error when absent."""
    path = os.path.join(workdir, THRESHOLD_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the threshold is fixed on held-out ID data when the run is "
                                f"evaluated; run `python -m diffjax eval --config=... --workdir={workdir}` first.")
    with open(path) as f:
        return json.load(f)


def default_output(workdir: str) -> str:
    return os.path.join(workdir, "scores.csv")


def write_rows(path: str, ids: Sequence, scores: np.ndarray, threshold: float) -> dict:
    """One row per input (id, score, ood = score > threshold) -> ``path`` (.csv or .jsonl); returns a summary."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in ROW_FORMATS:
        raise ValueError(f"score output {path!r}: expected a {' or '.join(ROW_FORMATS)} file name")
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(ids) != scores.size:
        raise ValueError(f"{len(ids)} ids but {scores.size} scores")
    flags = scores > threshold
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        if ext == ".csv":
            w = csv.writer(f)
            w.writerow(["id", "score", "ood"])
            for i, s, o in zip(ids, scores, flags):
                w.writerow([i, repr(float(s)), int(o)])
        else:
            for i, s, o in zip(ids, scores, flags):
                f.write(json.dumps({"id": i, "score": float(s), "ood": bool(o)}) + "\n")
    os.replace(path + ".tmp", path)
    return {"output": os.path.abspath(path), "num_inputs": int(scores.size), "num_ood": int(flags.sum()),
            "threshold": float(threshold)}
