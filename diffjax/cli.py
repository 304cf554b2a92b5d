"""``python -m diffjax {train,eval,sweep,generate,score,demo} --config=configs/NAME.py[:arg] --workdir=DIR [--config.x=y]``
and ``python -m diffjax pipeline --config=... --root=DIR [--compare] [--arms=...] [--stage2_eval_every=N]``.

* ``train``: train / resume the run in DIR (``diffjax.train.trainer.train``).
* ``eval``: ``task.evaluate`` on DIR's latest checkpoint -> ``DIR/results.json``.
* ``sweep`` / ``generate``: ``task.sweep`` / ``task.generate`` -> ``DIR/sweep.json`` / ``DIR/generate.json``.
  ``generate`` takes ``--prompt="..."`` (repeatable) or ``--prompts_file=FILE`` (one prompt a line)
  and ``--show_steps`` (print the denoising trajectory); without prompts the task uses its own.
* ``score``: ``task.score`` on new inputs, ``--inputs=PATH`` (a file or folder), rows written to
  ``--output=FILE`` (.csv or .jsonl; default in DIR) -> ``DIR/score.json`` (a summary).
* ``pipeline``: AR2Diff's stages (or with ``--compare`` its comparison arms) under ``--root=DIR``, each trained
  in this process (``diffjax.train.pipeline``); ``--config.`` overrides apply to every stage.
* ``plan``: ``--mesh=DATAxMODEL [--devices=N] [--accelerator=NAME] [--utilization=0.4] [--json=PATH
  [--overwrite]]``: compiles the train step for that mesh on N fake CPU devices (re-executed with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) and prints per-device memory, FLOPs, the step
  time on NAME and whether it fits (``diffjax.train.plan``); no workdir, no weights, no accelerator.
* ``demo``: train, eval, then sweep if the task has one; ``--config`` defaults to ``configs/demo.py``
  and ``--workdir`` to ``workdirs/demo``.

Configs are ml_collections files (``get_config(arg=None)`` returning a locked ConfigDict; schema in
configs/gaussian2d.py). A relative ``--config`` path is looked up in the current directory, then in
the diffjax checkout. An override of a field that does not exist fails before anything runs, naming
the nearest valid field. This is the only module that reads flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys

from absl import flags
from ml_collections import config_flags

COMMANDS = ("train", "eval", "sweep", "generate", "score", "demo", "pipeline", "plan")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USAGE = ("usage: python -m diffjax {" + ",".join(COMMANDS) + "} --config=configs/NAME.py[:arg] "
         "--workdir=DIR [--config.field=value ...] [generate: --prompt=TEXT ... | --prompts_file=FILE] "
         "[--show_steps] [score: --inputs=PATH [--output=FILE]]\n"
         "       python -m diffjax pipeline --config=configs/NAME.py[:arg] --root=DIR [--compare] [--arms=A,B] "
         "[--stage2_eval_every=N] [--config.field=value ...]\n"
         "       python -m diffjax plan --config=configs/NAME.py[:arg] --mesh=DATAxMODEL [--devices=N] "
         "[--accelerator=NAME] [--utilization=0.4] [--json=PATH [--overwrite]] [--config.field=value ...]")


class UsageError(Exception):
    """A command-line mistake; ``main`` prints it and exits with status 2."""


def _resolve_config_path(value: str) -> str:
    path, sep, arg = value.partition(":")
    if not os.path.exists(path) and not os.path.isabs(path):
        alt = os.path.join(REPO_ROOT, path)
        if os.path.exists(alt):
            path = alt
    if not os.path.exists(path):
        raise UsageError(f"config file {path!r} not found (from --config={value}); expected e.g. "
                         f"--config=configs/gaussian2d.py")
    return path + sep + arg


def _load_config_file(value: str):
    from diffjax.train.config import load_config_module

    path, _, arg = value.partition(":")
    module = load_config_module(path)
    return module.get_config(arg) if arg else module.get_config()


def _field_paths(config, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if hasattr(v, "items") and hasattr(v, "lock"):
            out.extend(_field_paths(v, prefix + k + "."))
    return out


def _removed_task_field(config, field: str) -> str | None:
    """``task.a.b`` that the task's typed config lists in ``RENAMED`` (a removed field): what replaces it."""
    parts = field.split(".")
    if parts[0] != "task" or len(parts) < 2:
        return None
    try:
        from diffjax.tasks import base

        base._import_task(config.task.name)
    except Exception:  # noqa: BLE001 - the unknown-field message will be shown instead
        return None
    cls = base._CONFIGS.get(config.task.name)
    for part in parts[1:-1]:
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}.get(part, {}) if cls else {}
        cls = meta.get("nested")
    if cls is None or parts[-1] not in cls.RENAMED:
        return None
    return f"config.{field} was removed: {cls.RENAMED[parts[-1]]}"


def _unknown_override_message(config_value: str, argv: list[str]) -> str | None:
    """For the first ``--config.a.b=...`` naming no field: a message with the nearest valid field."""
    try:
        config = _load_config_file(config_value)
    except Exception:  # noqa: BLE001 - the original error will be shown instead
        return None
    known = set(_field_paths(config))
    for a in argv:
        if not a.startswith("--config."):
            continue
        field = a[len("--config."):].split("=", 1)[0]
        if field in known:
            continue
        removed = _removed_task_field(config, field)
        if removed:
            return removed
        close = difflib.get_close_matches(field, sorted(known), n=3, cutoff=0.5)
        parent = field.rpartition(".")[0]
        if parent not in known:
            parent = ""
        siblings = sorted(p.rpartition(".")[2] for p in known if p.rpartition(".")[0] == parent)
        hint = f" Did you mean --config.{close[0]}?" if close else ""
        return (f"unknown config field --config.{field} (in {config_value}).{hint}\n"
                f"Valid fields {'under ' + parent if parent else 'at the top level'}: {', '.join(siblings)}")
    return None


def parse_args(argv: list[str]):
    """``argv`` (with argv[0]) -> ``(command, config, workdir)``; raises ``UsageError``.
    (``parse_command`` also returns the command's own options.)"""
    command, config, workdir, _ = parse_command(argv)
    return command, config, workdir


def _prompts(fv) -> list[str] | None:
    """``--prompt`` values, then the non-blank lines of ``--prompts_file`` (read by ``data.text.lines``:
    UTF-8, split on "\\n" only; a line that is not UTF-8 is a ``UsageError`` naming the file and line)."""
    from diffjax.data.text.lines import file_lines
    from diffjax.errors import InputError

    prompts = list(fv.prompt or [])
    if fv.prompts_file:
        path = fv.prompts_file
        if not os.path.isfile(path):
            raise UsageError(f"--prompts_file={path}: no such file")
        try:
            prompts += [line for _, line in file_lines(path)]
        except InputError as e:
            raise UsageError(f"--prompts_file: {e}") from e
        except OSError as e:  # e.g. no permission to read it
            raise UsageError(f"--prompts_file={path}: cannot be read ({type(e).__name__}: {e.strerror or e})") from e
        if not prompts:
            raise UsageError(f"--prompts_file={path} holds no prompt (one prompt a line)")
    return prompts or None


def parse_command(argv: list[str]):
    """``argv`` -> ``(command, config, workdir, method_kwargs)``; ``method_kwargs`` are the options
    of ``generate`` (``prompts``, ``show_steps``) and ``score`` (``inputs``, ``output``)."""
    args = list(argv[1:])
    commands = [a for a in args if not a.startswith("-")]
    if not commands or commands[0] not in COMMANDS:
        got = commands[0] if commands else "nothing"
        close = difflib.get_close_matches(got, COMMANDS, n=1)
        raise UsageError(f"expected a command in {COMMANDS}, got {got!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else "") + f"\n{USAGE}")
    command = commands[0]
    args.remove(command)
    if len(commands) > 1:
        raise UsageError(f"unexpected positional arguments {commands[1:]}\n{USAGE}")
    has_config = any(a == "--config" or a.startswith("--config=") for a in args)
    if command == "demo":
        if not has_config:
            args.insert(0, "--config=configs/demo.py")
        if not any(a.startswith("--workdir") for a in args):
            args.insert(0, "--workdir=workdirs/demo")
    elif not has_config:
        raise UsageError(f"--config is required for {command!r}\n{USAGE}")
    # Normalise "--config PATH" to "--config=PATH" and resolve the path.
    norm, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--config" and i + 1 < len(args):
            a, i = "--config=" + args[i + 1], i + 1
        if a.startswith("--config="):
            a = "--config=" + _resolve_config_path(a[len("--config="):])
        norm.append(a)
        i += 1
    config_value = next(a[len("--config="):] for a in norm if a.startswith("--config="))
    full = [argv[0]] + norm
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "ml_collections config file[:arg]", flag_values=fv,
                                    lock_config=True, sys_argv=full)
    flags.DEFINE_string("workdir", None, "run directory", flag_values=fv)
    flags.DEFINE_multi_string("prompt", None, "generate: a prompt (repeatable)", flag_values=fv)
    flags.DEFINE_string("prompts_file", None, "generate: a file with one prompt a line", flag_values=fv)
    flags.DEFINE_boolean("show_steps", False, "generate: print the denoising trajectory", flag_values=fv)
    flags.DEFINE_string("inputs", None, "score: a file or folder of inputs to score", flag_values=fv)
    flags.DEFINE_string("output", None, "score: where to write the rows (.csv or .jsonl)", flag_values=fv)
    flags.DEFINE_string("root", None, "pipeline: the directory of the stage workdirs", flag_values=fv)
    flags.DEFINE_boolean("compare", False, "pipeline: run the comparison arms instead of one chain", flag_values=fv)
    flags.DEFINE_string("arms", "ar,ar2diff,n0,scratch,scratch2", "pipeline --compare: the arms", flag_values=fv)
    flags.DEFINE_integer("stage2_eval_every", 5, "pipeline --compare: stage-2 eval interval", flag_values=fv)
    flags.DEFINE_string("mesh", None, "plan: DATAxMODEL", flag_values=fv)
    flags.DEFINE_integer("devices", None, "plan: fake devices (default DATA*MODEL)", flag_values=fv)
    flags.DEFINE_string("accelerator", "tpu-v4", "plan: the accelerator of the estimate", flag_values=fv)
    flags.DEFINE_float("utilization", 0.4, "plan: the assumed fraction of peak FLOP/s", flag_values=fv)
    flags.DEFINE_string("json", None, "plan: also write the numbers here", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "plan: replace an existing --json file", flag_values=fv)
    try:
        fv(full)
    except (KeyError, AttributeError) as e:
        raise UsageError(_unknown_override_message(config_value, norm) or f"bad config override: {e}") from e
    except flags.Error as e:
        msg = _unknown_override_message(config_value, norm)
        raise UsageError(msg or f"{e}\n{USAGE}") from e
    if command == "plan":
        return command, fv.config, None, _plan_options(fv)
    if fv.mesh or fv.devices or fv.json:
        raise UsageError(f"--mesh / --devices / --json belong to 'plan', not {command!r}")
    pipeline_opts = bool(fv.root or fv.compare)
    if pipeline_opts and command != "pipeline":
        raise UsageError(f"--root / --compare belong to 'pipeline', not {command!r}")
    if command == "pipeline":
        if not fv.root or fv.workdir:
            raise UsageError(f"pipeline takes --root=DIR (the stage workdirs go under it), not --workdir\n{USAGE}")
        return command, fv.config, fv.root, {"compare_arms": bool(fv.compare), "stage2_eval_every": fv.stage2_eval_every,
                                             "arms": tuple(a for a in fv.arms.split(",") if a)}
    if not fv.workdir:
        raise UsageError(f"--workdir is required\n{USAGE}")
    method_kwargs = {}
    generate_opts = bool(fv.prompt or fv.prompts_file or fv.show_steps)
    score_opts = bool(fv.inputs or fv.output)
    if generate_opts and command != "generate":
        raise UsageError(f"--prompt / --prompts_file / --show_steps belong to 'generate', not {command!r}")
    if score_opts and command != "score":
        raise UsageError(f"--inputs / --output belong to 'score', not {command!r}")
    if command == "generate":
        prompts = _prompts(fv)
        if prompts is not None:
            method_kwargs["prompts"] = prompts
        if fv.show_steps:
            method_kwargs["show_steps"] = True
    if command == "score":
        if not fv.inputs:
            raise UsageError(f"score needs --inputs=PATH (a file or folder to score)\n{USAGE}")
        method_kwargs["inputs"] = fv.inputs
        if fv.output:
            method_kwargs["output"] = fv.output
    return command, fv.config, fv.workdir, method_kwargs


def _plan_options(fv) -> dict:
    """``plan``'s options, checked against each other and the config (``UsageError`` before anything compiles)."""
    from diffjax.train import plan

    if fv.workdir:
        raise UsageError(f"plan takes no --workdir (it writes nothing but --json)\n{USAGE}")
    if not fv.mesh:
        raise UsageError(f"plan needs --mesh=DATAxMODEL, e.g. --mesh=8x1\n{USAGE}")
    try:
        mesh = plan.parse_mesh(fv.mesh)
        devices = int(fv.devices) if fv.devices is not None else mesh[0] * mesh[1]
        plan.check_args(fv.config, mesh, devices, fv.accelerator, fv.utilization)
        plan.check_json_path(fv.json, fv.overwrite)
    except plan.PlanError as e:
        raise UsageError(str(e)) from e
    return {"mesh": mesh, "devices": devices, "accelerator": fv.accelerator, "utilization": float(fv.utilization),
            "json": fv.json, "overwrite": bool(fv.overwrite)}


def _plan(config, opts: dict, argv: list[str]) -> int:
    """Re-executes ``argv`` with ``opts["devices"]`` fake CPU devices (JAX fixes the count at first use); in
    that child, compiles and prints the plan."""
    import subprocess

    from diffjax.train import plan

    if os.environ.get(plan.CHILD_MARKER) != "1":
        env = plan.child_env(opts["devices"])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        return subprocess.run([sys.executable, "-m", "diffjax", *argv[1:]], env=env).returncode
    report = plan.plan_config(config, mesh=opts["mesh"], accelerator=opts["accelerator"],
                              utilization=opts["utilization"])
    print(plan.format_report(report), flush=True)
    if opts["json"]:
        print(f"wrote {plan.write_json(report, opts['json'], overwrite=opts['overwrite'])}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        command, config, workdir, method_kwargs = parse_command(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if command == "plan":
            return _plan(config, method_kwargs, argv)
        _run(command, config, workdir, method_kwargs)
    except NotImplementedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _user_errors() as e:  # the message says what to do; DIFFJAX_TRACEBACK=1 shows the trace
        if os.environ.get("DIFFJAX_TRACEBACK"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (missing files, config/checkpoint mismatches, NaN)."""
    from diffjax.checkpoints import orbax as ckpt_lib
    from diffjax.checkpoints.errors import CheckpointFormatError, CheckpointMismatchError
    from diffjax.errors import InputError
    from diffjax.ood.deploy import ThresholdError
    from diffjax.train import trainer, validate, workdir

    # InputError (a FileNotFoundError) also covers the readers' subclasses (e.g. data.text.lines.TextInputError)
    return (FileNotFoundError, InputError, ThresholdError, workdir.WorkdirConfigMismatch, workdir.WorkdirLocked,
            validate.ConfigError, trainer.NonFiniteError,
            CheckpointMismatchError, CheckpointFormatError, ckpt_lib.CheckpointCorruptError)


def _run(command: str, config, workdir: str, method_kwargs: dict) -> None:
    from diffjax.tasks.base import Task
    from diffjax.train import trainer
    from diffjax.train.sharding import maybe_initialize_distributed

    maybe_initialize_distributed(config.distributed)  # before anything touches a JAX backend
    if command == "train":
        trainer.train(config, workdir)
    elif command == "pipeline":  # workdir = --root
        from diffjax.train.pipeline import run_pipeline

        run_pipeline(config, workdir, **method_kwargs)
    elif command == "eval":
        trainer.run_task_method(config, workdir, "evaluate")
    elif command in ("sweep", "generate", "score"):
        trainer.run_task_method(config, workdir, command, **method_kwargs)
    else:  # demo
        from diffjax.models.options import ModelOptions
        from diffjax.tasks.base import build_task

        task = build_task(config.task, init_from=config.init_from,
                          model_options=ModelOptions.from_config(config))
        trainer.train(config, workdir, task=task)
        if not config.train.eval_at_end:
            trainer.run_task_method(config, workdir, "evaluate", task=task)
        if type(task).sweep is not Task.sweep:
            trainer.run_task_method(config, workdir, "sweep", task=task)
        print(f"demo finished: see {os.path.abspath(workdir)}", flush=True)
