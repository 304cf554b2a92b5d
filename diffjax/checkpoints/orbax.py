"""Train-state checkpoints with orbax: save every N steps and at the end, keep K, resume from latest.

A checkpoint is the whole ``TrainState`` (step, params, opt_state, rng, ema_params) as one orbax
``StandardSave`` item under ``workdir/checkpoints/<step>``. Together with step-deterministic data
(``Task.train_batches(start_step)``) and step-derived rngs, restoring it resumes a run bit-identically.
orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest.

Before restoring, the stored tree is compared with the expected one; any missing / unexpected
path or shape / dtype mismatch is reported in one ``CheckpointMismatchError`` naming every path.
Snapshots (params at chosen steps, for tasks such as DLSR) live in ``workdir/snapshots/<step>``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffjax.checkpoints.errors import CheckpointMismatchError  # noqa: F401  (re-exported)
from diffjax.checkpoints.trees import flatten_tree

PyTree = Any


def _short(e: Exception, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[:limit] + " ..."


class CheckpointCorruptError(RuntimeError):
    """A checkpoint directory exists but cannot be read."""


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """'/'-joined path (as the sharding rules) -> (shape, dtype name or "?")."""
    out = {}
    for key, leaf in flatten_tree(tree).items():
        dtype = getattr(leaf, "dtype", None)
        out[key] = (tuple(getattr(leaf, "shape", np.shape(leaf))), str(np.dtype(dtype)) if dtype is not None else "?")
    return out


def compare_trees(stored, expected, *, what: str = "checkpoint") -> None:
    """Raises ``CheckpointMismatchError`` listing every missing / unexpected path and mismatched shape."""
    s, e = _shapes(stored), _shapes(expected)
    missing = sorted(set(e) - set(s))
    unexpected = sorted(set(s) - set(e))
    mismatched = [(k, s[k], e[k]) for k in sorted(set(s) & set(e))
                  if s[k][0] != e[k][0] or (s[k][1] != "?" and e[k][1] != "?" and s[k][1] != e[k][1])]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{what} does not match the state the current config builds:"]
    for k in missing:
        lines.append(f"  missing in {what}: {k} (expected shape {e[k][0]} {e[k][1]})")
    for k in unexpected:
        lines.append(f"  unexpected in {what}: {k} (stored shape {s[k][0]} {s[k][1]})")
    for k, sv, ev in mismatched:
        lines.append(f"  shape/dtype mismatch: {k}: stored {sv[0]} {sv[1]}, expected {ev[0]} {ev[1]}")
    lines.append("The config (model size, optimizer, ema_decay, ...) differs from the run that wrote it: "
                 "use the original config, or a fresh --workdir.")
    raise CheckpointMismatchError("\n".join(lines))


def metadata_tree(metadata):
    """The tree of ArrayMetadata inside orbax's StepMetadata / TreeMetadata wrappers."""
    metadata = getattr(metadata, "item_metadata", metadata)
    return getattr(metadata, "tree", metadata)


def state_to_tree(state) -> dict:
    """TrainState -> plain dict without None entries (what is stored)."""
    d = {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}
    if state.ema_params is not None:
        d["ema_params"] = state.ema_params
    return d


def _abstract(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpointer:
    """Thin wrapper of ``ocp.CheckpointManager`` for train states.

    ``directory``: e.g. ``workdir/checkpoints``; ``keep``: checkpoints kept (oldest deleted).
    Every process must call ``save`` / ``restore`` (orbax coordinates multi-host writes).
    """

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_handlers=ocp.StandardCheckpointHandler())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, *, force: bool = True) -> None:
        """Saves ``state`` (a TrainState) as checkpoint ``step`` (asynchronously; see ``wait``)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(int(step), args=ocp.args.StandardSave(state_to_tree(state)), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, step: int, target_state):
        """Restores checkpoint ``step`` into the structure, shapes and shardings of ``target_state``
        (a TrainState of arrays or ShapeDtypeStructs). Raises ``CheckpointMismatchError`` naming every
        differing tree path, or ``CheckpointCorruptError`` if the files cannot be read."""
        target = state_to_tree(target_state)
        where = os.path.join(self.directory, str(step))
        try:
            stored = self.manager.item_metadata(step)
        except Exception as e:  # noqa: BLE001 - any read failure means an unusable checkpoint
            raise CheckpointCorruptError(
                f"cannot read the metadata of checkpoint {where}: {_short(e)}. Delete that "
                f"step directory to resume from an earlier one, or use a fresh --workdir.") from e
        stored_tree = metadata_tree(stored)
        if stored_tree is None:
            raise CheckpointCorruptError(f"checkpoint {where} has no readable metadata; delete it or use a "
                                         f"fresh --workdir.")
        compare_trees(stored_tree, target, what=f"checkpoint {where}")
        try:
            restored = self.manager.restore(int(step), args=ocp.args.StandardRestore(_abstract(target)))
        except Exception as e:  # noqa: BLE001
            raise CheckpointCorruptError(
                f"checkpoint {where} has the expected tree but its data cannot be read: {_short(e)}. "
                f"Delete that step directory to resume from an earlier one.") from e
        return target_state.replace(step=restored["step"], params=restored["params"],
                                    opt_state=restored["opt_state"], rng=restored["rng"],
                                    ema_params=restored.get("ema_params"))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_snapshot(workdir: str, step: int, params: PyTree) -> None:
    """Saves ``params`` as ``workdir/snapshots/<step>`` (all processes must call it)."""
    path = os.path.abspath(os.path.join(workdir, "snapshots", str(int(step))))
    if os.path.exists(path):
        return
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:  # synchronous
        ckptr.save(path, args=ocp.args.StandardSave(params))


def snapshot_steps_on_disk(workdir: str) -> list[int]:
    d = os.path.join(workdir, "snapshots")
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def load_snapshot(workdir: str, step: int, target_params: PyTree) -> PyTree:
    """Restores snapshot ``step`` into the structure / shardings of ``target_params``."""
    path = os.path.abspath(os.path.join(workdir, "snapshots", str(int(step))))
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        try:
            stored = ckptr.metadata(path)
        except Exception as e:  # noqa: BLE001
            raise CheckpointCorruptError(f"cannot read snapshot {path}: {_short(e)}") from e
        compare_trees(metadata_tree(stored), target_params, what=f"snapshot {path}")
        return ckptr.restore(path, args=ocp.args.StandardRestore(_abstract(target_params)))
