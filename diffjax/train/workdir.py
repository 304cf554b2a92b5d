"""A run's ``config.json``: written at the start, compared on every rerun.

A workdir belongs to one experiment. Rerunning with the same config resumes it; a config that
differs in anything but ``RESUMABLE_CHANGES`` (``diffjax/train/config.py``) is refused with every
differing field listed, unless ``config.overwrite`` (then config.json is rewritten).
"""

from __future__ import annotations

import json
import os

import jax

from diffjax.checkpoints.trees import flatten_tree
from diffjax.train.config import RESUMABLE_CHANGES

CONFIG_FILE = "config.json"


class WorkdirConfigMismatch(ValueError):
    """The workdir holds a run with a different config.json."""


def config_to_dict(config) -> dict:
    """ConfigDict -> plain JSON-able dict (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted fields that differ between two config dicts, ignoring ``RESUMABLE_CHANGES``."""
    dotted = dict(separator=".", is_leaf=lambda x: isinstance(x, list) or x is None)  # lists stay leaves
    a, b = flatten_tree(old, **dotted), flatten_tree(new, **dotted)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES):
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            diffs.append(f"{k}: workdir has {va!r}, command line has {vb!r}")
    return diffs


def prepare_workdir(config, workdir: str) -> None:
    """Creates ``workdir`` and writes ``config.json``; refuses a workdir written with a different
    config unless ``config.overwrite`` (then rewrites it). Only process 0 writes."""
    path = os.path.join(workdir, CONFIG_FILE)
    new = config_to_dict(config)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diffs = config_differences(old, new)
        if diffs and not config.overwrite:
            raise WorkdirConfigMismatch(
                f"{path} was written by a run with a different config:\n  " + "\n  ".join(diffs) +
                "\nUse a fresh --workdir, the original config, or pass --config.overwrite=True to rewrite "
                "config.json and resume from the existing checkpoints anyway.")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(new, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
