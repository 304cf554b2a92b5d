"""The generic trainer: any ``diffjax.tasks.base.Task`` on any mesh, resumable, NaN-guarded.

``train(config, workdir)`` builds the task from ``config.task``, a ("data", "model") mesh from
``config.mesh_shape``, shards params / optimizer state / EMA by ``config.sharding`` ("replicated", "tp",
"fsdp", "fsdp+tp"; the TP table is ``config.sharding_rules`` or the task's own), and runs
one ``jax.jit`` train step with explicit in/out shardings (no pmap) on global batches. It writes
``workdir/config.json``, ``metrics.jsonl``, TensorBoard events, orbax checkpoints (every
``train.checkpoint_every`` steps and at the end) and, with ``train.eval_at_end``, ``results.json``.
Rerunning the same command resumes from the latest checkpoint bit-identically (rng and data
position are functions of the step). A new run starts from ``config.init_from`` when it is set
(another workdir, an HF dir, a GGUF file; ``diffjax/train/init_from.py``). ``run_task_method``
serves the ``eval``, ``sweep`` and ``generate`` commands; the task gets the run's
``RuntimeContext`` (mesh, host->global batches) so evaluation and generation run sharded too.

Randomness: init uses ``fold_in(PRNGKey(seed), 0)``; train step ``s`` uses
``fold_in(fold_in(PRNGKey(seed), 1), s)`` (micro-batch ``i`` of an accumulated step folds in ``i``
once more); evaluation uses ``fold_in(PRNGKey(seed), 2)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.checkpoints import orbax as ckpt_lib
from diffjax.models import scan as scan_lib
from diffjax.models.options import ModelOptions
from diffjax.runtime import Progress, RuntimeContext
from diffjax.tasks.base import Task, build_task, prepare_call
from diffjax.train import init_from as init_from_lib
from diffjax.train import metrics as metrics_lib
from diffjax.train import sharding as sh
from diffjax.train.optim import make_optimizer
from diffjax.train.state import TrainState, ema_decay_at, ema_update
from diffjax.train.validate import validate_config
from diffjax.train.workdir import (WorkdirConfigMismatch, WorkdirLock, check_workdir_config,
                                   set_aside_checkpoints_after, write_config)

__all__ = ["NonFiniteError", "WorkdirConfigMismatch", "Setup", "build", "make_train_step_fn", "train",
           "call_task_method", "restore_latest", "run_evaluate", "run_task_method", "write_results"]

PyTree = Any


class NonFiniteError(FloatingPointError):
    """Raised when a train step produced a non-finite loss or gradient norm."""


# --------------------------------------------------------------------------------------------
# Set-up: task, mesh, runtime context, optimizer, shardings, the jitted train step
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run needs, built once by ``build`` (no arrays allocated).

    ``train_step``: the jitted ``(state, global batch) -> (state, metrics)`` (state donated);
    ``context``: the ``RuntimeContext`` handed to the task's evaluate / sweep / generate and used
    to turn host batches into global ones; ``init_state(workdir=None)``: a fresh state, with
    ``config.init_from`` applied (its report written into ``workdir`` when given).
    """

    config: Any
    task: Task
    mesh: jax.sharding.Mesh
    context: RuntimeContext
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_state: TrainState
    state_shardings: TrainState
    train_step: Callable[[TrainState, Any], tuple[TrainState, dict]]
    init_state: Callable[..., TrainState]


def tp_rules(config, task: Task):
    """The tensor-parallel rule table of a run: ``config.sharding_rules`` when set (back-compat),
    else the task's family table (``task.sharding_rules``)."""
    return tuple(config.sharding_rules) or tuple(task.sharding_rules)


def build(config, *, task: Task | None = None, shapes_only: bool = False) -> Setup:
    """Task, mesh, optimizer, the sharded state layout and the jitted train step for ``config``
    (``shapes_only``: the task reads no data set, ``build_task``; ``plan``)."""
    mesh = sh.make_mesh(config.mesh_shape)  # before the task reads any data or weights: a bad shape fails first
    task = task if task is not None else build_task(config.task, init_from=config.init_from,
                                                    model_options=ModelOptions.from_config(config),
                                                    shapes_only=shapes_only)
    context = RuntimeContext(mesh, process_index=jax.process_index(), process_count=jax.process_count(),
                             batch_spec=task.batch_spec())
    optimizer, schedule = make_optimizer(config.optimizer, int(config.train.num_steps))
    ema_decay = float(config.ema_decay)
    base = jax.random.PRNGKey(int(config.seed))
    init_rng, train_rng = jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)

    def init_params():
        return task.init_params(init_rng)

    abstract_params = jax.eval_shape(init_params)
    p_shardings = sh.param_shardings(abstract_params, tp_rules(config, task), mesh, config.get("sharding", "tp"))
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    o_shardings = sh.mirror_shardings(abstract_opt, abstract_params, p_shardings, mesh)
    rep = sh.replicated(mesh)

    def make_state(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          rng=train_rng, ema_params=params if ema_decay > 0 else None)

    state_shardings = TrainState(step=rep, params=p_shardings, opt_state=o_shardings, rng=rep,
                                 ema_params=p_shardings if ema_decay > 0 else None)
    abstract_state = jax.eval_shape(make_state, abstract_params)
    abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings)

    def init_state(workdir: str | None = None) -> TrainState:
        if task.jit_init:
            params = jax.jit(init_params, out_shardings=p_shardings)()
        else:  # e.g. pretrained weights read from disk: keep them out of the compiled program
            params = jax.device_put(init_params(), p_shardings)
        loaded = init_from_lib.init_params_from(config.init_from, task, params, p_shardings)
        if loaded is not None:
            params, report = loaded
            if workdir is not None:
                init_from_lib.write_report(workdir, report)
        return jax.jit(make_state, in_shardings=(p_shardings,), out_shardings=state_shardings)(params)

    fsdp = p_shardings if "fsdp" in config.get("sharding", "tp") else None
    step_fn = make_train_step_fn(task, optimizer, schedule, ema_decay=ema_decay, ema_warmup=bool(config.ema_warmup),
                                 accumulate_steps=int(config.train.accumulate_steps), fsdp_shardings=fsdp)
    # Batches arrive as global arrays already sharded by ``context.global_batch`` (batch_spec), so
    # their in_shardings are taken from the arguments (None).
    train_step = jax.jit(step_fn, in_shardings=(state_shardings, None), out_shardings=(state_shardings, rep),
                         donate_argnums=(0,))
    return Setup(config=config, task=task, mesh=mesh, context=context, optimizer=optimizer, schedule=schedule,
                 abstract_state=abstract_state, state_shardings=state_shardings, train_step=train_step,
                 init_state=init_state)


def make_train_step_fn(task: Task, optimizer, schedule, *, ema_decay: float = 0.0, ema_warmup: bool = False,
                       accumulate_steps: int = 1, fsdp_shardings=None):
    """The pure train step ``(state, batch) -> (new_state, metrics)``.

    EMA (when ``state.ema_params`` is not None): ``ema <- d * ema + (1 - d) * params`` after the
    optimizer update, with ``d = ema_decay`` or, with ``ema_warmup``,
    ``min(ema_decay, (1 + n) / (10 + n))`` at update n = ``state.step + 1`` (``ema_decay_at``).

    Loss and grads of ``task.loss_fn`` at ``rng = fold_in(state.rng, state.step)``; with
    ``accumulate_steps = k > 1`` the global batch ``[B, ...]`` is split into k micro-batches
    (example ``j*k + i`` goes to micro-batch ``i``, which keeps each device's examples local) whose
    grads are averaged in a ``lax.scan``. If the loss or the global grad norm is non-finite the
    state is returned unchanged and ``metrics["finite"]`` is False (the host then stops).

    ``fsdp_shardings`` (the params' shardings under "fsdp" / "fsdp+tp"): the params enter the loss
    constrained to ``sharding.gathered_shardings`` of them (weights all-gathered, activations stay
    split over "data" on the batch) and the gradients are constrained back to the split layout
    (reduce-scattered) before the optimizer update, which then runs on each device's slice. A scanned
    stack's params are gathered (and their gradients reduce-scattered) one layer at a time inside the
    scan (``models.scan.gather_layer_params``), so the whole stack is never gathered on one device.
    """
    gathered = sh.gathered_shardings(fsdp_shardings, keep_stacks=True) if fsdp_shardings is not None else None
    per_layer = sh.layer_shardings(fsdp_shardings) if fsdp_shardings is not None else None
    k = int(accumulate_steps)
    grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)

    def loss_and_grads(params, batch, rng):
        if k == 1:
            (loss, metrics), grads = grad_fn(params, batch, rng)
            return loss, dict(metrics), grads

        def split(x):
            x = jnp.asarray(x)
            if x.ndim == 0:
                return jnp.broadcast_to(x, (k,))
            return jnp.moveaxis(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 1, 0)

        micro = jax.tree_util.tree_map(split, batch)
        zero = jax.tree_util.tree_map(jnp.zeros_like, params)
        (_, m_shape), _ = jax.eval_shape(grad_fn, params, jax.tree_util.tree_map(lambda x: x[0], micro), rng)

        def body(carry, inp):
            i, mb = inp
            g_acc, l_acc, m_acc = carry
            (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
            g_acc = jax.tree_util.tree_map(jnp.add, g_acc, grads)
            m_acc = jax.tree_util.tree_map(jnp.add, m_acc, dict(metrics))
            return (g_acc, l_acc + loss, m_acc), None

        m0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), dict(m_shape))
        (g, l, m), _ = jax.lax.scan(body, (zero, jnp.zeros((), jnp.float32), m0), (jnp.arange(k), micro))
        inv = 1.0 / k
        return l * inv, jax.tree_util.tree_map(lambda x: x * inv, m), jax.tree_util.tree_map(lambda x: x * inv, g)

    def step_fn(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        params = state.params
        if gathered is not None:
            params = jax.lax.with_sharding_constraint(params, gathered)
            with scan_lib.gather_layer_params(per_layer):  # a scanned stack: one layer at a time, in the loop
                loss, metrics, grads = loss_and_grads(params, batch, rng)
            grads = jax.lax.with_sharding_constraint(grads, fsdp_shardings)
        else:
            loss, metrics, grads = loss_and_grads(params, batch, rng)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:  # update number n = state.step + 1 (LitEma counts before use)
            ema = ema_update(ema, params, ema_decay_at(state.step + 1, ema_decay, ema_warmup))
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, state)
        out = {**{k_: jnp.asarray(v, jnp.float32) for k_, v in metrics.items()},
               "loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step), "finite": finite}
        return new, out

    return step_fn


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------

def _snapshot_steps(task: Task) -> tuple[int, ...]:
    return tuple(sorted(int(s) for s in task.snapshot_steps))


def _check_finite(step: int, metrics: dict, checkpointer, ckpt_dir: str) -> None:
    if bool(jax.device_get(metrics["finite"])):
        return
    checkpointer.wait()
    last = checkpointer.latest_step()
    loss, gn = float(jax.device_get(metrics["loss"])), float(jax.device_get(metrics["grad_norm"]))
    where = (f"the last good checkpoint is step {last} in {ckpt_dir}; rerunning resumes from it"
             if last is not None else "no checkpoint had been written yet")
    raise NonFiniteError(
        f"non-finite loss or gradient at train step {step} (loss={loss}, grad_norm={gn}); training stopped "
        f"and nothing was saved after it: {where}. Lower optimizer.learning_rate, set "
        f"optimizer.grad_clip_norm, or check the data of that step.")


def _restore_or_init(setup: Setup, checkpointer, ckpt_dir: str, workdir: str, resume_step: int) -> TrainState:
    """The checkpoint to resume from (latest, or ``train.resume_step``), else a fresh / init_from state.
    A corrupt latest checkpoint is reported with its step and path and the earlier steps to resume from."""
    is_main = jax.process_index() == 0
    steps = checkpointer.all_steps()
    if not steps:
        return setup.init_state(workdir)
    step = steps[-1] if resume_step < 0 else resume_step
    try:
        state = checkpointer.restore(step, setup.abstract_state)
    except ckpt_lib.CheckpointCorruptError as e:
        earlier = [s for s in steps if s < step]
        hint = (f" Checkpoint(s) {earlier} come before it: resume from step {earlier[-1]} with "
                f"--config.train.resume_step={earlier[-1]} (later checkpoints are moved to "
                f"{workdir}/checkpoints_set_aside/, nothing is deleted)." if earlier else
                " No earlier checkpoint exists: use a fresh --workdir.")
        raise ckpt_lib.CheckpointCorruptError(f"checkpoint step {step} ({ckpt_dir}/{step}) is corrupt: {e}{hint}") from e
    if is_main:
        print(f"resumed from checkpoint step {step} in {ckpt_dir}"
              + (" (init_from is applied only when a run starts)" if setup.config.init_from else ""), flush=True)
    return state


def train(config, workdir: str, *, task: Task | None = None) -> TrainState:
    """Trains (or resumes) the run in ``workdir`` up to ``config.train.num_steps``; returns the state.

    Order: config values checked; the workdir locked (a second trainer on it is refused); its
    config.json compared (a differing config is refused unless ``overwrite``); the state restored
    or initialised; only then is config.json (re)written, so a failed overwrite changes nothing."""
    validate_config(config)
    sh.maybe_initialize_distributed(config.distributed)
    workdir = os.path.abspath(workdir)
    with WorkdirLock(workdir):
        return _train_locked(config, workdir, task)


def _train_locked(config, workdir: str, task: Task | None) -> TrainState:
    write_config_needed = check_workdir_config(config, workdir)
    setup = build(config, task=task)
    task, tc = setup.task, config.train
    num_steps, gbs = int(tc.num_steps), int(tc.global_batch_size)
    sh.check_batch_divisibility(gbs, setup.mesh, int(tc.accumulate_steps))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    set_aside_checkpoints_after(workdir, int(tc.resume_step))
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=int(tc.keep))
    is_main = jax.process_index() == 0
    writer = None
    try:
        state = _restore_or_init(setup, checkpointer, ckpt_dir, workdir, int(tc.resume_step))
        if write_config_needed:
            write_config(config, workdir)
        writer = metrics_lib.MetricsWriter(workdir, active=is_main)
        start = int(jax.device_get(state.step))
        writer.drop_after(start)
        snapshots = _snapshot_steps(task)
        ckpt_every, log_every = int(tc.checkpoint_every), max(int(tc.log_every), 1)
        eval_every = int(tc.eval_every)
        progress = Progress(start, num_steps, active=is_main)
        batches = task.train_batches(start, global_batch_size=gbs, process_index=jax.process_index(),
                                     process_count=jax.process_count())
        if 0 in snapshots and start == 0:
            ckpt_lib.save_snapshot(workdir, 0, state.eval_params())
        pending = None  # (step, metrics) of the previous step, checked one step late to keep dispatch async
        for step in range(start, num_steps):
            batch = setup.context.global_batch(next(batches), gbs)
            state, metrics = setup.train_step(state, batch)
            if pending is not None:
                _check_finite(*pending, checkpointer, ckpt_dir)
                if step == start + 1:  # the first step (compile) is done: time the rest
                    progress.reset(step)
            pending = (step + 1, metrics)
            done = step + 1
            sync = (done % log_every == 0 or done == num_steps or done in snapshots
                    or (ckpt_every and done % ckpt_every == 0) or (eval_every and done % eval_every == 0))
            if not sync:
                continue
            _check_finite(*pending, checkpointer, ckpt_dir)
            if done % log_every == 0 or done == num_steps:
                scalars = {k: v for k, v in jax.device_get(metrics).items() if k != "finite"}
                rate = progress.rate(done)
                writer.write(done, {**scalars, "steps_per_sec": rate})
                progress.report(done, scalars, rate)
            if done in snapshots:
                ckpt_lib.save_snapshot(workdir, done, state.eval_params())
            if (ckpt_every and done % ckpt_every == 0) or done == num_steps:
                checkpointer.save(done, state)
            if eval_every and done % eval_every == 0 and done != num_steps:
                res = run_evaluate(setup, state, workdir)
                writer.write(done, _scalars_only(res), prefix="eval/")
        if pending is not None:
            _check_finite(*pending, checkpointer, ckpt_dir)
        if int(jax.device_get(state.step)) == num_steps and num_steps not in checkpointer.all_steps():
            checkpointer.save(num_steps, state)
        checkpointer.wait()
        if tc.eval_at_end:
            res = run_evaluate(setup, state, workdir)
            write_results(workdir, res, "results.json")
            writer.write(num_steps, _scalars_only(res), prefix="eval/")
        return state
    finally:
        if writer is not None:
            writer.close()
        checkpointer.close()


def _scalars_only(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_scalars_only(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) or (np.ndim(v) == 0 and not isinstance(v, (str, bool, type(None)))):
            out[prefix + k] = v
    return out


def write_results(workdir: str, results: dict, name: str) -> str:
    path = os.path.join(workdir, name)
    if jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
            json.dump(metrics_lib.to_jsonable(results), f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
    return path


# --------------------------------------------------------------------------------------------
# eval / sweep / generate on a trained workdir
# --------------------------------------------------------------------------------------------

def _load_snapshots(setup: Setup, workdir: str) -> dict:
    steps = _snapshot_steps(setup.task)
    if not steps:
        return {}
    target = setup.abstract_state.ema_params if setup.abstract_state.ema_params is not None else setup.abstract_state.params
    on_disk = set(ckpt_lib.snapshot_steps_on_disk(workdir))
    missing = [s for s in steps if s not in on_disk]
    if missing:
        print(f"warning: snapshots {missing} not in {workdir}/snapshots (train.num_steps too small?)", flush=True)
    return {s: ckpt_lib.load_snapshot(workdir, s, target) for s in steps if s in on_disk}


def call_task_method(setup: Setup, method: str, state: TrainState, workdir: str, **method_kwargs) -> dict:
    """``task.<method>(eval params, rng = fold_in(seed, 2), workdir, context=..., step=state's step,
    [snapshots], **method_kwargs)``."""
    rng = jax.random.fold_in(jax.random.PRNGKey(int(setup.config.seed)), 2)
    fn = {"evaluate": setup.task.evaluate, "sweep": setup.task.sweep, "generate": setup.task.generate,
          "score": setup.task.score}[method]
    kwargs = {"snapshots": _load_snapshots(setup, workdir)} if _snapshot_steps(setup.task) else {}
    kwargs["step"] = int(jax.device_get(state.step))
    return fn(state.eval_params(), rng, workdir, context=setup.context, **kwargs, **method_kwargs) or {}


def run_evaluate(setup: Setup, state: TrainState, workdir: str) -> dict:
    return call_task_method(setup, "evaluate", state, workdir)


def restore_latest(config, workdir: str, *, task: Task | None = None) -> tuple[Setup, TrainState]:
    """The setup and latest checkpointed state of a trained ``workdir`` (error if there is none)."""
    sh.maybe_initialize_distributed(config.distributed)
    setup = build(config, task=task)
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=int(config.train.keep))
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: run `python -m diffjax train` with this "
                                    f"--config and --workdir first.")
        return setup, checkpointer.restore(latest, setup.abstract_state)
    finally:
        checkpointer.close()


_OUTPUT = {"evaluate": "results.json", "sweep": "sweep.json", "generate": "generate.json", "score": "score.json"}


def run_task_method(config, workdir: str, method: str, *, task: Task | None = None, **method_kwargs) -> dict:
    """``eval`` / ``sweep`` / ``generate`` / ``score`` on the latest checkpoint of ``workdir``: calls the
    task's method with the (EMA) params, the run's context and ``method_kwargs`` (e.g. ``prompts``
    for generate, ``inputs`` for score) and writes results.json / sweep.json / generate.json / score.json."""
    validate_config(config)  # the task's settings (e.g. generate's, overridden on the command line) before a restore
    workdir = os.path.abspath(workdir)
    # the method's own checks (paths, formats, files it needs), before anything is built or restored
    method_kwargs = prepare_call(config.task, workdir, method, method_kwargs)
    setup, state = restore_latest(config, workdir, task=task)
    t0 = time.perf_counter()
    res = call_task_method(setup, method, state, workdir, **method_kwargs)
    if jax.process_index() == 0:
        print(f"{method} took {time.perf_counter() - t0:.1f} s; wrote {os.path.join(workdir, _OUTPUT[method])}",
              flush=True)
    write_results(workdir, res, _OUTPUT[method])
    return res
