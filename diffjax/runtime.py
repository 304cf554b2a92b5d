"""The runtime context: what a task needs of the mesh, without importing the trainer.

The trainer (``diffjax.train``) builds one ``RuntimeContext`` per run and hands it to the task's
``evaluate`` / ``sweep`` / ``generate`` (and ``score``) as ``context=``. A notebook builds one with
``RuntimeContext.local()`` (every local device on the "data" axis) or from any ``Mesh`` with axes
``("data", "model")``. It turns host data into global sharded ``jax.Array``s and back:

* ``global_batch(local, global_batch_size)``: this process's slice ``[B / P, ...]`` of each field ->
  global arrays ``[B, ...]`` sharded over "data" on the leading axis (or as ``batch_spec`` says);
* ``map_batches(fn, inputs, batch_size=...)``: the whole evaluation set (the same host arrays on
  every process) in global batches — each process feeds its slice, ``fn`` runs once per batch on
  the mesh, the outputs come back to every host as numpy, padding dropped. ``fn`` also gets each
  example's global index, so per-example randomness (``fold_in(rng, index)``) and therefore every
  output is independent of the batch size, the mesh and the process count;
* ``to_host(x)``: a (possibly multi-process) global array -> numpy on every host.

``Progress`` is the one rate / ETA line of the library: the trainer's ``step 300/3000 loss 0.41 |
85.1 steps/s | ETA 0:00:31`` and, through ``Progress.update``, the long loops over examples
(``map_batches``: scoring, generation, feature extraction) on stderr, process 0 only, at most one
line every ``PROGRESS_EVERY_S`` seconds and only once a loop has run that long.

Same code on 1 CPU, a 2x2 mesh of fake devices in tests, 8 TPU cores or several hosts.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import sys
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
PROGRESS_EVERY_S = 5.0  # seconds between progress lines of a long loop (Progress.update)


def fmt_duration(seconds: float) -> str:
    """``93.4`` -> ``"0:01:33"``; ``"?"`` when not finite."""
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


class Progress:
    """Rate and ETA of a loop from ``start`` to ``total`` (training steps, or examples of a long loop).

    The trainer: ``rate(step)`` (over the last reporting window) and ``report(step, scalars, rate)``
    -> ``step 300/3000 loss 0.41 | 85.1 steps/s | ETA 0:00:31`` (stdout). A loop over examples:
    ``update(done)`` after each piece -> ``score: 4096/20000 examples | 85.1 examples/s | ETA
    0:03:07`` on ``stream`` (stderr) once ``every_s`` seconds have passed since the last line (the
    first after ``every_s`` of work, so short loops stay silent), and a last line at ``total`` when
    any was printed. ``active=False`` (processes other than 0) prints nothing.
    """

    def __init__(self, start_step: int, num_steps: int, *, active: bool = True, stream=None, desc: str = "step",
                 unit: str = "steps", every_s: float | None = None):
        self.num_steps = int(num_steps)
        self.active = active
        self.stream = stream or sys.stdout
        self.desc, self.unit = desc, unit
        self.every_s = PROGRESS_EVERY_S if every_s is None else float(every_s)
        self._t0 = time.perf_counter()
        self._last_t = self._t0
        self._last_step = int(start_step)
        self._start = int(start_step)
        self._printed = False

    @classmethod
    def loop(cls, total: int, desc: str, *, unit: str = "examples", active: bool = True) -> "Progress":
        """A rate-limited progress of a long loop over ``total`` items, on stderr (see ``update``)."""
        return cls(0, total, active=active, stream=sys.stderr, desc=desc, unit=unit)

    def reset(self, step: int) -> None:
        """Restart the rate window at ``step`` (e.g. after the compile of the first step)."""
        self._last_t, self._last_step = time.perf_counter(), int(step)

    def rate(self, step: int) -> float:
        now = time.perf_counter()
        dt = now - self._last_t
        rate = (step - self._last_step) / dt if dt > 0 else float("nan")
        self._last_t, self._last_step = now, int(step)
        return rate

    def line(self, step: int, scalars: Mapping[str, Any], rate: float) -> str:
        eta = (self.num_steps - step) / rate if rate and rate > 0 else float("nan")
        shown = " ".join(f"{k} {float(scalars[k]):.4g}" for k in ("loss", "grad_norm", "learning_rate")
                         if k in scalars)
        return f"step {step}/{self.num_steps} {shown} | {rate:.1f} steps/s | ETA {fmt_duration(eta)}"

    def report(self, step: int, scalars: Mapping[str, Any], rate: float) -> None:
        if self.active:
            print(self.line(step, scalars, rate), file=self.stream, flush=True)

    def update(self, done: int) -> None:
        """``done`` of ``total`` items finished: a line with the mean rate since the start and the ETA,
        rate-limited (class docstring)."""
        if not self.active:
            return
        now = time.perf_counter()
        last = done >= self.num_steps
        if not (now - self._last_t >= self.every_s or (last and self._printed)):
            return
        elapsed = now - self._t0
        rate = (done - self._start) / elapsed if elapsed > 0 else float("nan")
        eta = (self.num_steps - done) / rate if rate and rate > 0 else float("nan")
        print(f"{self.desc}: {done}/{self.num_steps} {self.unit} | {rate:.1f} {self.unit}/s | ETA {fmt_duration(eta)}",
              file=self.stream, flush=True)
        self._last_t, self._printed = now, True


def log(msg: str) -> None:
    """One line on stderr from process 0 (a task's notes: sets read, features extracted, the chosen t)."""
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


def path_str(path) -> str:
    """'/'-joined pytree key path: ``(DictKey('mlp'), DictKey('kernel'))`` -> ``"mlp/kernel"``."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_shardings(batch_example: PyTree, mesh: Mesh, batch_spec: Mapping[str, Any] | None = None):
    """Per-field ``NamedSharding``: leading axis over "data" unless ``batch_spec`` names another spec
    (``{'/'-joined field path: tuple of mesh axis names / None per dim}``); scalars are replicated."""
    batch_spec = dict(batch_spec or {})

    def one(path, x):
        spec = batch_spec.get(path_str(path))
        if spec is None:
            spec = ("data",) if np.ndim(x) >= 1 else ()
        return NamedSharding(mesh, P(*spec))

    return jax.tree_util.tree_map_with_path(one, batch_example)


def global_batch(local_batch: PyTree, shardings, global_batch_size: int) -> PyTree:
    """This process's slice ``[B / process_count, ...]`` of each field -> global ``jax.Array``s ``[B, ...]``."""

    def one(x, s):
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.make_array_from_process_local_data(s, x, ())
        return jax.make_array_from_process_local_data(s, x, (global_batch_size,) + x.shape[1:])

    return jax.tree_util.tree_map(one, local_batch, shardings)



def example_keys(rng: jax.Array, example_ids: jax.Array) -> jax.Array:
    """One key per example, ``fold_in(rng, id)``: ``example_ids [N] int -> keys [N]``. With the global
    example index ``map_batches`` provides, per-example randomness does not depend on the mesh or batching."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(example_ids)


@dataclasses.dataclass(frozen=True)
class RuntimeContext:
    """The mesh and process layout a task computes on (see the module docstring).

    ``mesh``: axes ("data", "model"); ``process_index`` / ``process_count``: this host and the
    number of hosts; ``batch_spec``: the task's per-field batch partition specs (None = "data" on
    the leading axis of every field).
    """

    mesh: Mesh
    process_index: int = 0
    process_count: int = 1
    batch_spec: Mapping[str, Any] | None = None

    @classmethod
    def local(cls, model_parallel: int = 1) -> "RuntimeContext":
        """Every device of this process on a ("data", "model") mesh with ``model_parallel`` model shards."""
        devices = np.asarray(jax.local_devices(), dtype=object)
        if devices.size % model_parallel:
            raise ValueError(f"{devices.size} devices do not divide into model_parallel={model_parallel}")
        return cls(Mesh(devices.reshape(-1, model_parallel), ("data", "model")))

    @property
    def data_size(self) -> int:
        """Size of the mesh's "data" axis (global batches must divide by it)."""
        return int(self.mesh.shape["data"])

    @property
    def is_main(self) -> bool:
        """True on process 0 (the one that writes files and prints)."""
        return self.process_index == 0

    def round_batch_size(self, batch_size: int) -> int:
        """The smallest multiple of lcm(data axis, process count) that is >= ``batch_size``."""
        unit = math.lcm(self.data_size, self.process_count)
        return max(unit, -(-int(batch_size) // unit) * unit)

    def replicated(self) -> NamedSharding:
        return replicated(self.mesh)

    def global_batch(self, local_batch: PyTree, global_batch_size: int) -> PyTree:
        """This process's slice of each field -> global arrays sharded by ``batch_spec``."""
        return global_batch(local_batch, batch_shardings(local_batch, self.mesh, self.batch_spec), global_batch_size)

    def to_host(self, tree: PyTree) -> PyTree:
        """Global arrays -> numpy on every host (an all-gather across processes when there are several)."""
        if self.process_count > 1:
            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)

    def map_batches(self, fn: Callable[[PyTree, jax.Array], PyTree], inputs: PyTree, *, batch_size: int,
                    progress: str | None = "progress", unit: str = "examples") -> PyTree:
        """Applies ``fn(batch, index)`` to all of ``inputs`` in global batches on the mesh.

        Args:
          fn: ``(batch: inputs' pytree with leading [Bg] global arrays, index: int32 [Bg] global
            example indices) -> pytree of arrays with leading [Bg]``. Jit it, and pass params as an
            argument of the jitted function (a closure would bake them into the program):
            ``step = jax.jit(f); ctx.map_batches(lambda b, i: step(params, b, i), ...)``.
          inputs: pytree of host arrays ``[N, ...]``, the same on every process.
          batch_size: examples per global batch, rounded up by ``round_batch_size``. The last batch
            is padded by repeating the last example (index ``N + j``); its outputs are dropped.
          progress: the label of the rate / ETA line a long run prints (``Progress.update``, on
            process 0); None: no line. ``unit``: what that line counts ("examples", "images").

        Returns: the outputs as numpy ``[N, ...]`` on every host, in input order.
        """
        leaves = jax.tree_util.tree_leaves(inputs)
        if not leaves:
            raise ValueError("map_batches: inputs has no arrays")
        n = int(np.shape(leaves[0])[0])
        if any(np.shape(x)[0] != n for x in leaves):
            raise ValueError(f"map_batches: inputs disagree on the leading (example) axis: "
                             f"{[np.shape(x) for x in leaves]}")
        if n == 0:
            raise ValueError("map_batches: inputs hold no examples")
        bs = self.round_batch_size(min(int(batch_size), n))
        per = bs // self.process_count
        lo = self.process_index * per
        outputs = []
        bar = Progress.loop(n, progress, unit=unit, active=self.is_main) if progress else None
        for start in range(0, n, bs):
            idx = np.arange(start, start + bs)
            take = np.minimum(idx, n - 1)[lo:lo + per]
            local = jax.tree_util.tree_map(lambda x: np.asarray(x)[take], inputs)
            index = idx[lo:lo + per].astype(np.int32)
            tree = (local, index)  # eval inputs: every field over "data" on its leading axis
            g_batch, g_index = global_batch(tree, batch_shardings(tree, self.mesh), bs)
            out = self.to_host(fn(g_batch, g_index))
            outputs.append(jax.tree_util.tree_map(lambda y: np.asarray(y)[: min(bs, n - start)], out))
            if bar is not None:
                bar.update(min(start + bs, n))
        return jax.tree_util.tree_map(lambda *ys: np.concatenate(ys, axis=0), *outputs)
