"""A run's ``config.json``: written at the start, compared on every rerun.

A workdir belongs to one experiment. Rerunning with the same config resumes it; a config that
differs in anything but ``RESUMABLE_CHANGES`` (``diffjax/train/config.py``) is refused with every
differing field listed, unless ``config.overwrite`` (then config.json is rewritten).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time

import jax

from diffjax.checkpoints.trees import flatten_tree
from diffjax.train.config import ADDED_FIELD_DEFAULTS, RESUMABLE_CHANGES

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


class WorkdirConfigMismatch(ValueError):
    """The workdir holds a run with a different config.json."""


def config_to_dict(config) -> dict:
    """ConfigDict -> plain JSON-able dict (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted fields that differ between two config dicts, ignoring ``RESUMABLE_CHANGES``."""
    dotted = dict(separator=".", is_leaf=lambda x: isinstance(x, list) or x is None)  # lists stay leaves
    a, b = flatten_tree(old, **dotted), flatten_tree(new, **dotted)
    a = {**ADDED_FIELD_DEFAULTS, **a}  # a config.json written before these fields existed
    diffs = []
    for k in sorted(set(a) | set(b)):
        if any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES):
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            diffs.append(f"{k}: workdir has {va!r}, command line has {vb!r}")
    return diffs


def check_workdir_config(config, workdir: str) -> bool:
    """Compares ``config`` with ``workdir/config.json``: raises ``WorkdirConfigMismatch`` listing every
    differing field unless ``config.overwrite``; returns whether config.json must be (re)written
    (``write_config``, called once the run's state is built and restored)."""
    path = os.path.join(workdir, CONFIG_FILE)
    new = config_to_dict(config)
    if not os.path.exists(path):
        return True
    with open(path) as f:
        old = json.load(f)
    diffs = config_differences(old, new)
    if diffs and not config.overwrite:
        raise WorkdirConfigMismatch(
            f"{path} was written by a run with a different config:\n  " + "\n  ".join(diffs) +
            "\nUse a fresh --workdir, the original config, or pass --config.overwrite=True to rewrite "
            "config.json and resume from the existing checkpoints anyway.")
    return old != new


def write_config(config, workdir: str) -> None:
    """Writes ``workdir/config.json`` atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def prepare_workdir(config, workdir: str) -> None:
    """``check_workdir_config`` then ``write_config`` (for callers that build no state)."""
    if check_workdir_config(config, workdir):
        write_config(config, workdir)


class WorkdirLocked(RuntimeError):
    """Another trainer holds the workdir."""


class WorkdirLock:
    """An exclusive ``flock`` on ``workdir/.lock`` for the life of a trainer (process 0 only).

    A second trainer on the same workdir is refused at start with the holder's pid, host and start
    time. The OS drops the lock when the holder exits, even on SIGKILL, so no stale lock remains.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd = None

    def __enter__(self):
        if jax.process_index() != 0:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise WorkdirLocked(f"{os.path.dirname(self.path)} is in use by another trainer ({holder}); wait for it "
                                f"to finish or use another --workdir.") from None
        os.ftruncate(fd, 0)
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.write(fd, info.encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False


def set_aside_checkpoints_after(workdir: str, resume_step: int) -> list[int]:
    """For ``train.resume_step = N >= 0``: moves checkpoints after N to ``workdir/checkpoints_set_aside/``
    (so the run continues from N and rewrites them; nothing is deleted). Returns the moved steps;
    an N that is not on disk raises ``FileNotFoundError`` listing the steps that are."""
    if resume_step < 0:
        return []
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(ckpt_dir) else []
    if resume_step not in steps:
        raise FileNotFoundError(f"train.resume_step={resume_step}: no checkpoint {resume_step} in {ckpt_dir} "
                                f"(checkpoints on disk: {steps or 'none'}).")
    moved = [s for s in steps if s > resume_step]
    if moved and jax.process_index() == 0:
        aside = os.path.join(workdir, "checkpoints_set_aside")
        os.makedirs(aside, exist_ok=True)
        for s in moved:
            dest = os.path.join(aside, f"{s}-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(os.path.join(ckpt_dir, str(s)), dest)
            print(f"train.resume_step={resume_step}: moved checkpoint {s} to {dest}", flush=True)
    return moved
