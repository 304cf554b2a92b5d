"""The task interface: what the generic trainer needs from each paper's method.

A task binds a Flax model (``diffjax.models``) to a corruption and a loss / score
(``diffjax.diffusion``, ``diffjax.ood``). The trainer (``diffjax.train``) runs any task; a task
never imports the trainer. Tasks are registered by name and built from the ``config.task``
sub-config (the only place a task reads a config).

Contract (all four methods of papers.md fit it):

* ``init_params(rng) -> params``: a pytree of trainable parameters (frozen parts, e.g. a frozen
  EfficientNet, live in the task itself, not in ``params``).
* ``loss_fn(params, batch, rng) -> (loss, metrics)``: pure and jit-able; ``batch`` is a dict of
  global ``jax.Array``s with leading batch axis; ``metrics`` is a dict of scalar arrays (means over
  the batch). Must be deterministic given ``rng``.
* ``train_batches(start_step, *, global_batch_size, process_index, process_count)``: an iterator of
  this process's *local* slice of each global batch (dict of numpy arrays, leading axis
  ``global_batch_size // process_count``), deterministic in (task seed, step) so that a run
  resumed at ``start_step`` sees exactly the batches an uninterrupted run would.
* ``evaluate(params, rng, workdir, *, context) -> dict``: evaluation on the mesh; returns
  JSON-serialisable results (the trainer writes ``results.json``) and may write plots into
  ``workdir`` (on ``context.is_main``). ``context`` is a ``diffjax.runtime.RuntimeContext``: the
  mesh, process index/count, ``context.map_batches`` to run a jitted function over a whole host
  evaluation set in global sharded batches, ``context.global_batch`` and ``context.to_host``.
  Results must not depend on the mesh: draw per-example randomness with ``fold_in(rng, index)``
  using the global example index ``map_batches`` provides.
* Optional: ``sweep`` and ``generate`` (same arguments) for the ``sweep`` / ``generate`` CLI
  commands; ``batch_spec()`` naming each batch field's partition; ``pretrained_params(path)`` and
  ``pretrained_readers(path)`` (the same weights, per slice) for ``config.init_from`` pointing at an HF dir or a
  GGUF file (see ``diffjax/train/init_from.py``).

Trainer hooks (``diffjax/train/trainer.py``):

* ``params`` given to ``evaluate`` / ``sweep`` / ``generate`` are the EMA params when
  ``config.ema_decay > 0``, else the raw params; they are global (possibly sharded) ``jax.Array``s.
* ``snapshot_steps``: if non-empty, the trainer saves the (EMA) params after each listed step
  (0 = the initial params) under ``workdir/snapshots/<step>`` and calls ``evaluate`` / ``sweep`` /
  ``generate`` with the keyword ``snapshots={step: params}`` (steps not reached are left out).
  Tasks without snapshots are called without that keyword.
* ``jit_init``: True (default) runs ``init_params`` under ``jax.jit`` with the params' shardings as
  ``out_shardings`` (nothing materialises unsharded); set False when ``init_params`` reads
  pretrained weights from disk (they are then ``device_put`` onto their shardings).
* ``sharding_rules``: the tensor-parallel rule table of the task's model family (e.g.
  ``models.bert.SHARDING_RULES``) used by ``config.sharding`` "tp" / "fsdp+tp" when
  ``config.sharding_rules`` is empty (``diffjax/train/sharding.py``).
* ``batch_spec()``: ``{field: spec}`` for batch fields not sharded as ``("data",)`` on the leading
  axis (spec: tuple of mesh axis names / None per dim, as in ``config.sharding_rules``).
* ``abstract_batch(global_batch_size)``: the shapes of a global training batch at its largest
  bucket (``batch_shapes`` of a template batch built by the task's batching code), for ``plan``.
* Every method also gets ``step=``: the training step of the params (e.g. recorded in the OOD
  tasks' ``threshold.json``).
* ``@register_prepare_call(name)`` on ``prepare_call(task_config, workdir, method, kwargs) -> kwargs``:
  the CLI's cheap checks of a method's arguments before the task is built or a checkpoint restored
  (paths, file formats, files the method needs in ``workdir``); it may pass what it read on.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Mapping

import jax

from diffjax.runtime import RuntimeContext

PyTree = Any
Batch = Mapping[str, Any]
Metrics = Mapping[str, jax.Array]


class Task(abc.ABC):
    """Base class of every diffjax task. See the module docstring for the contract."""

    name: str = "task"
    snapshot_steps: tuple[int, ...] = ()
    jit_init: bool = True
    sharding_rules: tuple = ()  # the model family's tensor-parallel table (config.sharding_rules overrides)

    @abc.abstractmethod
    def init_params(self, rng: jax.Array) -> PyTree:
        """Returns freshly initialised (or pretrained-loaded) trainable params."""

    @abc.abstractmethod
    def loss_fn(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        """Pure scalar loss and scalar metrics for one global batch."""

    @abc.abstractmethod
    def train_batches(
        self, start_step: int, *, global_batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> Iterator[dict]:
        """Yields this process's local slice of global batch ``start_step``, ``start_step + 1``, ..."""

    def evaluate(self, params: PyTree, rng: jax.Array, workdir: str, *, context: RuntimeContext, **kwargs) -> dict:
        """Evaluation on ``context``'s mesh; default: none. ``kwargs``: ``snapshots`` (see above)."""
        del params, rng, workdir, context, kwargs
        return {}

    def sweep(self, params: PyTree, rng: jax.Array, workdir: str, *, context: RuntimeContext, **kwargs) -> dict:
        raise NotImplementedError(f"task {self.name!r} has no sweep")

    def generate(self, params: PyTree, rng: jax.Array, workdir: str, *, context: RuntimeContext, **kwargs) -> dict:
        """Generation. Text tasks accept ``prompts`` (list of str; None = the task's own eval prompts)
        and ``show_steps`` (bool: print the denoising trajectory) from ``python -m diffjax generate``."""
        raise NotImplementedError(f"task {self.name!r} has no generate")

    def score(self, params: PyTree, rng: jax.Array, workdir: str, *, context: RuntimeContext, inputs: str,
              output: str | None = None, **kwargs) -> dict:
        """OOD tasks: score the inputs at ``inputs`` (a file or folder) with the trained detector and
        write one row per input (id, score, OOD flag) to ``output`` (CSV or JSONL by extension;
        default in ``workdir``); returns a summary (``python -m diffjax score``)."""
        raise NotImplementedError(f"task {self.name!r} has no score")

    def pretrained_params(self, path: str) -> PyTree:
        """The params of a pretrained model (local HF dir or ``.gguf`` file) placed in this task's
        params tree, for ``config.init_from``; a partial tree is fine (missing paths keep their fresh
        init and are listed). Default: the model's own params tree, as loaded."""
        from diffjax.checkpoints.pretrained import load_pretrained

        return load_pretrained(path)[1]

    def pretrained_readers(self, path: str):
        """Per-slice readers of the pretrained model ``path`` (local HF safetensors dir or ``.gguf`` file) by
        this task's param paths, ``{path: checkpoints.hf_slices.LeafReader}``, so ``config.init_from`` loads
        each param straight into its shards; None: read ``pretrained_params(path)`` whole instead. Default:
        the model's own params (``hf_slices.leaf_readers``), or None for a task with its own
        ``pretrained_params`` (it overrides this too, or is read whole)."""
        if type(self).pretrained_params is not Task.pretrained_params:
            return None
        from diffjax.checkpoints import hf_slices

        return hf_slices.leaf_readers(path)

    def batch_spec(self) -> Mapping[str, Any] | None:
        """Per-field batch partition specs; None = every field sharded over "data" on axis 0."""
        return None

    def abstract_batch(self, global_batch_size: int) -> dict:
        """``{field: jax.ShapeDtypeStruct}`` of one global training batch ``[global_batch_size, ...]`` at its
        largest shape (the longest bucket), from the task's own batching code, reading no data where it can:
        what ``python -m diffjax plan`` compiles the train step for (``batch_shapes`` of a template batch)."""
        raise NotImplementedError(f"task {self.name!r} has no abstract_batch, which `python -m diffjax plan` needs")


def batch_shapes(batch: Mapping[str, Any]) -> dict:
    """A host batch (numpy arrays) -> ``{field: jax.ShapeDtypeStruct}`` with the dtypes JAX gives them
    (int64 -> int32 unless x64 is enabled)."""
    import numpy as np

    return {k: jax.ShapeDtypeStruct(np.shape(v), jax.dtypes.canonicalize_dtype(np.asarray(v).dtype))
            for k, v in batch.items()}


_REGISTRY: dict[str, Callable[[Any], Task]] = {}
_VALIDATORS: dict[str, Callable[[Any], None]] = {}
_CONFIGS: dict[str, type] = {}


def register_task(name: str, *, validate: Callable[[Any], None] | None = None, config: type | None = None):
    """Decorator on a ``from_config(task_config) -> Task`` factory, e.g. ``@register_task("gaussian2d",
    config=Gaussian2DConfig)``.

    ``config``: the task's typed config (a frozen ``diffjax.tasks.fields.TaskConfig`` dataclass).
    ``build_task`` builds it once from ``config.task`` (validating every field) and passes the typed
    config to the factory. ``validate(task_config)`` is the older form: it raises
    ``diffjax.errors.ConfigError`` for a field outside its range and the factory gets the ConfigDict.
    Either reads no data and no weights (``build_task`` and the trainer's config check run it)."""

    def wrap(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"task {name!r} registered twice")
        _REGISTRY[name] = factory
        if config is not None:
            _CONFIGS[name] = config
            _VALIDATORS[name] = config.from_config
        elif validate is not None:
            _VALIDATORS[name] = validate
        return factory

    return wrap


def _import_task(name: str) -> None:
    """Imports the module of task ``name`` (``diffjax.tasks.<name>``, or a dotted module) so it registers."""
    import importlib

    from diffjax.tasks.fields import ConfigError

    module = name if "." in name else f"diffjax.tasks.{name}"
    if name not in _REGISTRY:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "(none imported)"
        raise ConfigError(f"config.task.name={name!r} is invalid: unknown task; known tasks: {known}. A task module "
                          f"diffjax/tasks/{name}.py must call @register_task({name!r}).")


def validate_task_config(task_config) -> None:
    """Checks every field of ``task_config`` against its task's ranges (``ConfigError``); loads nothing."""
    name = task_config.name
    _import_task(name)
    if name in _VALIDATORS:
        _VALIDATORS[name](task_config)


def build_task(task_config, *, init_from: str = "", model_options=None, shapes_only: bool = False) -> Task:
    """Builds the task named ``task_config.name``, importing ``diffjax.tasks.<name>`` on demand, after
    checking its fields (a typed config's ``from_config``, or ``validate_task_config``).

    ``init_from``: the run's ``config.init_from``. A factory that takes the keyword ``arch_source``
    gets the pretrained model that gives the architecture
    (``diffjax.checkpoints.pretrained.architecture_source``: None for a fresh init), so one field gives
    both the architecture and the weights. A factory that takes the keyword ``model_options`` gets
    ``model_options`` (``diffjax.models.options.ModelOptions``: scanned layers, remat, precision; the
    defaults when None). A factory that takes the keyword ``shapes_only`` gets it: True (``plan``) builds
    only what ``init_params``, ``abstract_batch`` and the train step need, reading no data set.

    A dotted name (``"my_package.my_task"``) names a task module outside diffjax: that module is
    imported and must register the same name with ``@register_task("my_package.my_task")``.
    """
    import inspect

    name = task_config.name
    _import_task(name)
    if name in _CONFIGS:
        cfg = _CONFIGS[name].from_config(task_config)
    else:
        validate_task_config(task_config)
        cfg = task_config
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    kwargs = {}
    if "arch_source" in params:
        from diffjax.checkpoints.pretrained import architecture_source

        kwargs["arch_source"] = architecture_source(init_from)
    if "model_options" in params:
        from diffjax.models.options import DEFAULT

        kwargs["model_options"] = model_options if model_options is not None else DEFAULT
    if "shapes_only" in params:
        kwargs["shapes_only"] = bool(shapes_only)
    return factory(cfg, **kwargs)


_PREPARE_CALLS: dict[str, Callable[..., dict]] = {}


def register_prepare_call(name: str):
    """Decorator: ``@register_prepare_call("dlsr")`` on ``prepare_call(task_config, workdir, method, kwargs)
    -> kwargs`` (see the module docstring)."""

    def wrap(fn):
        _PREPARE_CALLS[name] = fn
        return fn

    return wrap


def prepare_call(task_config, workdir: str, method: str, kwargs: dict) -> dict:
    """Runs task ``task_config.name``'s ``prepare_call`` (no task is built); ``kwargs`` unchanged if it has none
    (or the task is unknown: ``build_task`` then says so)."""
    name = task_config.name
    if name not in _REGISTRY:
        import importlib

        try:
            importlib.import_module(name if "." in name else f"diffjax.tasks.{name}")
        except ModuleNotFoundError:
            pass
    fn = _PREPARE_CALLS.get(name)
    return fn(task_config, workdir, method, dict(kwargs)) if fn is not None else dict(kwargs)
