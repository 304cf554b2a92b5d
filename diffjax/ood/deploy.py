"""Deploying a trained OOD detector (both OOD tasks): the saved threshold and the score rows.

At evaluation time a task fixes the flag's threshold on **held-out ID data** -- the score that
accepts 95% of it (``metrics.threshold_at_tpr``, the FPR95 convention of the table) -- and saves
it in the workdir (``threshold.json``), so that ``python -m diffjax score`` (``Task.score``) needs
no ID data: it scores the new inputs with the same t / noise draws and flags ``score > threshold``.

``threshold.json`` also records what it was fitted on: the training step and a fingerprint of the
params (``params_fingerprint``: a hash of every leaf's path, dtype, shape and bytes). ``score`` checks
the restored params against it (``check_fitted_on``) and refuses other weights -- a retrained or
further-trained workdir, or a run stopped before its final eval -- with a ``ThresholdError`` naming
both steps and the ``eval`` command that refits; so is a file that is not valid JSON, lacks a field,
or predates these fields.

Rows are written as CSV (``id,score,ood``) or JSONL (``{"id", "score", "ood"}``), by the output
file's extension, and replace an existing file atomically only when that file is a previous score
output (``is_score_output``: the exact header / keys and value types ``write_rows`` writes).
``check_output`` refuses, before anything runs, an output that is the input, a folder, a name
without a .csv / .jsonl extension, or any other existing file: a user's file is never overwritten.
Problems with the *inputs* (missing, empty, unreadable) or the output path raise ``InputError``:
one line naming the path and what was expected. It subclasses ``FileNotFoundError`` because the
CLI prints that family as one ``error:`` line (``diffjax/cli.py`` ``_user_errors``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffjax.errors import InputError
from diffjax.ood import metrics

THRESHOLD_FILE = "threshold.json"
ROW_FORMATS = (".csv", ".jsonl")
CSV_HEADER = ("id", "score", "ood")
# what score must reproduce (written by the tasks' evaluate) and what the params check needs
THRESHOLD_FIELDS = {"score": str, "threshold": (int, float), "score_t": int, "num_seeds": int, "score_seed": int}
FITTED_ON_FIELDS = ("params_step", "params_fingerprint")


class ThresholdError(ValueError):
    """``threshold.json`` is unreadable, incomplete, or was fitted on other params than the restored ones."""


def _refit(workdir: str) -> str:
    return f"python -m diffjax eval --config=... --workdir={workdir}"


# ----------------------------------------------------------------------------------------------
# What a threshold was fitted on: training step + params fingerprint


def params_fingerprint(params: Any) -> str:
    """A hash of ``params``: every leaf's path, dtype, shape and bytes (blake2b, 16 bytes in hex).

    Cheap next to scoring (one pass over the bytes). Call it on **every** process: leaves sharded over
    several hosts are gathered first.
    """
    h = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fitted_on(params: Any, step: int | None) -> dict:
    """``{"params_step", "params_fingerprint"}`` for ``save_threshold`` (every process; see ``params_fingerprint``)."""
    return {"params_step": None if step is None else int(step), "params_fingerprint": params_fingerprint(params)}


def check_fitted_on(thr: dict, workdir: str, *, params: Any, step: int | None) -> None:
    """Refuses (``ThresholdError``) params other than those ``thr`` (a ``load_threshold`` record) was fitted on."""
    fp = params_fingerprint(params)
    if fp == thr["params_fingerprint"]:
        return
    path = os.path.join(workdir, THRESHOLD_FILE)
    now = "unknown" if step is None else step
    raise ThresholdError(
        f"{path} was fitted on the params of training step {thr['params_step']} (fingerprint "
        f"{thr['params_fingerprint'][:12]}), but the restored checkpoint is step {now} (fingerprint {fp[:12]}): "
        f"the run was retrained, trained further, or stopped before its final eval, and that threshold does "
        f"not apply to these weights. Refit it on these params: `{_refit(workdir)}`, then score again.")


def fit_threshold(heldout_id_scores: np.ndarray, tpr: float = 0.95) -> float:
    """The smallest threshold accepting (score <= threshold) at least ``tpr`` of the held-out ID scores."""
    s = np.asarray(heldout_id_scores, np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"cannot fix a threshold on {s.size} held-out ID scores (empty or non-finite)")
    return float(metrics.threshold_at_tpr(np.asarray(s, np.float32), tpr))


def save_threshold(workdir: str, *, score: str, heldout_id_scores: np.ndarray, heldout: str,
                   params_step: int | None, params_fingerprint: str, tpr: float = 0.95, **meta) -> dict:
    """Fits the threshold and writes ``workdir/threshold.json`` (atomically); returns its content.

    ``score``: the score name it applies to; ``heldout``: what the held-out ID data were (for the
    record); ``params_step`` / ``params_fingerprint``: the params it was fitted on (``fitted_on``);
    ``meta``: the scoring setup that ``score`` must reproduce (t, number of noise draws, ...).
    """
    s = np.asarray(heldout_id_scores, np.float64).reshape(-1)
    rec = {"score": score, "threshold": fit_threshold(s, tpr), "id_accepted": float(tpr),
           "heldout": heldout, "num_heldout": int(s.size),
           "heldout_accepted_fraction": float(np.mean(s <= fit_threshold(s, tpr))),
           "rule": "flag OOD when score > threshold (higher score = more OOD)",
           "params_step": None if params_step is None else int(params_step),
           "params_fingerprint": str(params_fingerprint), **meta}
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, THRESHOLD_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return rec


def load_threshold(workdir: str) -> dict:
    """``workdir/threshold.json`` (written by ``evaluate``), checked: absent -> ``FileNotFoundError``; not
    JSON, a missing or mistyped field, or no record of the params it was fitted on -> ``ThresholdError``."""
    path = os.path.join(workdir, THRESHOLD_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the threshold is fixed on held-out ID data when the run is "
                                f"evaluated; run `{_refit(workdir)}` first.")
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ThresholdError(f"{path} is corrupt (not valid JSON: {type(e).__name__}: {e}); delete it and rerun "
                             f"`{_refit(workdir)}` to fit the threshold again") from e
    if not isinstance(rec, dict):
        raise ThresholdError(f"{path} is corrupt (a JSON {type(rec).__name__}, expected an object); delete it and "
                             f"rerun `{_refit(workdir)}` to fit the threshold again")
    for field, kind in THRESHOLD_FIELDS.items():
        v = rec.get(field)
        if not isinstance(v, kind) or isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)):
            raise ThresholdError(f"{path} is corrupt (field {field!r} is {v!r}, expected a "
                                 f"{'finite number' if field == 'threshold' else getattr(kind, '__name__', kind)}); "
                                 f"rerun `{_refit(workdir)}` to fit the threshold again")
    step, fp = rec.get("params_step"), rec.get("params_fingerprint")
    if any(k not in rec for k in FITTED_ON_FIELDS) or not isinstance(fp, str) or not (
            step is None or (isinstance(step, int) and not isinstance(step, bool))):
        raise ThresholdError(f"{path} does not record the training step and params it was fitted on (written by an "
                             f"older diffjax), so it cannot be checked against the restored weights; rerun "
                             f"`{_refit(workdir)}` to fit it again on them")
    return rec


def default_output(workdir: str) -> str:
    return os.path.join(workdir, "scores.csv")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_score_output(path: str) -> bool:
    """True when ``path`` holds rows as ``write_rows`` writes them, and nothing else: a CSV whose header
    is exactly ``id,score,ood`` with a number score and a 0/1 flag on every row, or a JSONL file whose
    every line is an object with exactly the keys id, score (number) and ood (boolean)."""
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if ext == ".csv":
                rows = csv.reader(f)
                if tuple(next(rows, ())) != CSV_HEADER:
                    return False
                for r in rows:
                    if len(r) != 3 or r[2] not in ("0", "1"):
                        return False
                    float(r[1])
                return True
            if ext == ".jsonl":
                n = 0
                for line in f:
                    rec = json.loads(line)
                    if (not isinstance(rec, dict) or set(rec) != set(CSV_HEADER) or not _is_number(rec["score"])
                            or not isinstance(rec["ood"], bool)):
                        return False
                    n += 1
                return n > 0
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return False
    return False


def check_output(output: str, inputs: str | None = None) -> str:
    """Refuses (``InputError``) a score output that is not a .csv / .jsonl name, is the input file or
    folder (same path, link or hard link), is a folder, cannot be created, or is an existing file that
    is not a previous score output (``is_score_output``); returns it as an absolute path."""
    shown = output
    p = os.path.abspath(os.path.expanduser(output))
    ext = os.path.splitext(p)[1].lower()
    if ext not in ROW_FORMATS:
        raise InputError(f"score output {shown!r}: expected a file name ending in {' or '.join(ROW_FORMATS)} "
                         f"(rows as CSV or JSONL); change --output")
    if inputs is not None:
        src = os.path.realpath(os.path.expanduser(inputs))
        same = os.path.realpath(p) == src or (os.path.exists(p) and os.path.exists(src) and os.path.samefile(p, src))
        if same:
            raise InputError(f"score output {shown!r} is the input {inputs!r}: scoring would replace your inputs "
                             f"with score rows; pass another --output (e.g. scores{ext})")
    if os.path.isdir(p):
        raise InputError(f"score output {shown!r} is a folder; pass a file name ending in "
                         f"{' or '.join(ROW_FORMATS)} as --output")
    if os.path.lexists(p) and not os.path.isfile(p):
        raise InputError(f"score output {shown!r} exists and is not a regular file; pass another --output")
    if os.path.exists(p) and not is_score_output(p):
        raise InputError(f"score output {shown!r} already exists and is not a previous score output (rows "
                         f"{','.join(CSV_HEADER)} written by `score`); it is left untouched: pass a new --output "
                         f"file, or move that file away")
    d = os.path.dirname(p)
    while not os.path.exists(d):  # the first existing ancestor must be a writable folder
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise InputError(f"score output {shown!r}: {d!r} is a file, not a folder; pass another --output")
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"score output {shown!r}: the folder {d!r} is not writable; pass another --output")
    return p


def write_rows(path: str, ids: Sequence, scores: np.ndarray, threshold: float, *, inputs: str | None = None) -> dict:
    """One row per input (id, score, ood = score > threshold) -> ``path`` (.csv or .jsonl); returns a summary.

    ``path`` is checked again (``check_output``, with ``inputs``) right before it is replaced; the rows
    are written to a temporary file in the same folder and renamed over it (atomic).
    """
    path = check_output(path, inputs)
    ext = os.path.splitext(path)[1].lower()
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(ids) != scores.size:
        raise ValueError(f"{len(ids)} ids but {scores.size} scores")
    flags = scores > threshold
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            if ext == ".csv":
                w = csv.writer(f)
                w.writerow(CSV_HEADER)
                for i, s, o in zip(ids, scores, flags):
                    w.writerow([i, repr(float(s)), int(o)])
            else:
                for i, s, o in zip(ids, scores, flags):
                    f.write(json.dumps({"id": i, "score": float(s), "ood": bool(o)}) + "\n")
        os.chmod(tmp, _new_file_mode())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {"output": path, "num_inputs": int(scores.size), "num_ood": int(flags.sum()),
            "threshold": float(threshold)}


def _new_file_mode() -> int:
    try:  # the umask without os.umask(), which would change it for every thread meanwhile
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644
