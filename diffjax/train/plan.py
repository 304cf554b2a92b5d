"""``python -m diffjax plan``: does a config fit, and how fast would it run, before renting the hardware.

``plan_config(config, mesh=(DATA, MODEL), accelerator=NAME, utilization=u)`` builds the run exactly as
the trainer does (``trainer.build``: task, mesh, abstract state and its shardings, the jitted train step;
nothing allocated), takes the task's ``abstract_batch`` (the shapes of a global batch at its longest
bucket) and lowers and compiles the real train step for that mesh. On fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``: the CLI re-executes itself with it) no
accelerator and no weights are needed. It reports, per device:

* state bytes from the state shardings (each leaf's shard shape x itemsize): params, optimizer state,
  EMA, the rest (step, rng);
* XLA's ``memory_analysis`` of the compiled sharded program: argument / output / alias / temp bytes.
  These are XLA:CPU's estimates (its fusion and buffer assignment, not the TPU / GPU compiler's);
  peak = argument + output - alias + temp;
* FLOPs per step: XLA's ``cost_analysis`` (the per-device program; a loop body, e.g. a scanned layer
  stack or gradient accumulation, counted once: then the estimate uses the jaxpr count), the matmul FLOPs of the step's jaxpr (``jaxpr_flops``:
  all devices together, scan bodies times their length) and ``6 * params * tokens`` for the text tasks;
* on ``accelerator`` (``ACCELERATORS``) at ``utilization`` of its peak (bf16, or fp32 with
  ``config.precision="fp32"``): step time and tokens/s (examples/s without tokens), and
  ``fits: yes/no (X GiB of Y GiB HBM per device)``.

``write_json(report, path, overwrite=False)`` never replaces an existing file unless ``overwrite``.
Bad input (mesh, devices, batch, accelerator, utilization) is one ``PlanError`` line before anything compiles.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time

from diffjax.errors import ConfigError

GIB = 2 ** 30


class PlanError(ConfigError):
    """A bad ``plan`` argument (``--mesh``, ``--devices``, ``--accelerator``, batch size, ``--json``)."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """Peak dense matmul FLOP/s (bf16 and fp32) and HBM bytes of one chip / GPU."""

    bf16_flops: float
    fp32_flops: float
    hbm_bytes: float


# TPUs run float32 matmuls at default precision as one bf16 pass (JAX's default), hence fp32 = bf16 there.
# HBM: TPU spec sheets give GiB, NVIDIA's give GB (1e9 bytes).
ACCELERATORS = {
    "tpu-v4": Accelerator(275e12, 275e12, 32 * GIB),
    "tpu-v5e": Accelerator(197e12, 197e12, 16 * GIB),
    "tpu-v5p": Accelerator(459e12, 459e12, 95 * GIB),
    "a100-40gb": Accelerator(312e12, 19.5e12, 40e9),
    "a100-80gb": Accelerator(312e12, 19.5e12, 80e9),
    "h100-80gb": Accelerator(989e12, 67e12, 80e9),
    "h200": Accelerator(989e12, 67e12, 141e9),
}


# --------------------------------------------------------------------------------------------
# Arguments (checked before anything is built or compiled)
# --------------------------------------------------------------------------------------------

def parse_mesh(text: str) -> tuple[int, int]:
    """``"DATAxMODEL"`` (e.g. ``"64x4"``) -> ``(64, 4)``; ``PlanError`` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text or ""))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise PlanError(f"--mesh={text!r} is invalid: expected DATAxMODEL with positive integers, e.g. --mesh=64x4")
    return int(m.group(1)), int(m.group(2))


def check_args(config, mesh: tuple[int, int], devices: int, accelerator: str, utilization: float) -> None:
    """Every ``plan`` argument against the others and ``config``; one ``PlanError`` line for the first bad one."""
    data, model = mesh
    if devices < 1:
        raise PlanError(f"--devices={devices} is invalid: expected a positive number of devices")
    if data * model > devices:
        raise PlanError(f"--mesh={data}x{model} needs {data * model} devices; --devices={devices}")
    if accelerator not in ACCELERATORS:
        raise PlanError(f"--accelerator={accelerator!r} is unknown; known: {', '.join(ACCELERATORS)}")
    if not 0.0 < float(utilization) <= 1.0:
        raise PlanError(f"--utilization={utilization} is invalid: expected a fraction of peak in (0, 1]")
    gbs, k = int(config.train.global_batch_size), int(config.train.accumulate_steps)
    if gbs % (data * k):
        raise PlanError(f"train.global_batch_size={gbs} does not divide by the mesh's data axis ({data})"
                        + (f" times train.accumulate_steps ({k})" if k > 1 else "")
                        + f"; change --config.train.global_batch_size or --mesh")


def check_json_path(path: str | None, overwrite: bool) -> None:
    """``--json=PATH`` must not exist (unless ``overwrite``) and its folder must."""
    if not path:
        return
    if os.path.exists(path) and not overwrite:
        raise PlanError(f"--json={path} exists; pass --overwrite to replace it or choose another path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PlanError(f"--json={path}: the folder {folder} does not exist")


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------

def shard_bytes(tree) -> int:
    """Bytes one device holds of ``tree`` (``ShapeDtypeStruct``s with a ``sharding``): the sum over leaves
    of the shard shape's size x itemsize (every device holds equal shards of a ``NamedSharding``)."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return int(total)


def jaxpr_flops(jaxpr) -> tuple[float, int]:
    """``(matmul FLOPs, loops)`` of a (closed) jaxpr, all devices together: ``2 * out size * contracted size``
    per ``dot_general``, a ``scan`` body times its length, a ``cond`` its costliest branch, a ``while`` body
    once; ``loops``: the scans (length > 1) and whiles met, whose bodies XLA's ``cost_analysis`` counts once."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total, loops = 0.0, 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            k = math.prod(eqn.invars[0].aval.shape[d] for d in lhs_contract)
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
            continue
        inner = 0.0
        for v in eqn.params.values():
            if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
                f, n = jaxpr_flops(v)
            elif isinstance(v, (tuple, list)) and v and all(hasattr(getattr(b, "jaxpr", b), "eqns") for b in v):
                f, n = max(jaxpr_flops(b) for b in v)  # cond branches
            else:
                continue
            inner, loops = inner + f, loops + n
        length = int(eqn.params["length"]) if name == "scan" else 1
        loops += int(name == "while" or length > 1)
        total += inner * length
    return total, loops


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------

def plan_config(config, *, mesh: tuple[int, int], accelerator: str = "tpu-v4", utilization: float = 0.4) -> dict:
    """Compiles ``config``'s train step for ``mesh`` on this process's devices and returns the report
    (module docstring; ``format_report`` prints it). ``config.mesh_shape`` is replaced by ``mesh``."""
    import jax

    from diffjax.runtime import batch_shardings
    from diffjax.train import trainer
    from diffjax.train.validate import validate_config

    check_args(config, mesh, len(jax.devices()), accelerator, utilization)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.mesh_shape = tuple(mesh)
    validate_config(config)
    t0 = time.perf_counter()
    setup = trainer.build(config, shapes_only=True)
    gbs = int(config.train.global_batch_size)
    batch = setup.task.abstract_batch(gbs)
    shardings = batch_shardings(batch, setup.mesh, setup.task.batch_spec())
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in batch.items()}
    t1 = time.perf_counter()
    traced = setup.train_step.trace(setup.abstract_state, batch)
    compiled = traced.lower().compile()
    t2 = time.perf_counter()

    state = setup.abstract_state
    n_dev = mesh[0] * mesh[1]
    mem = compiled.memory_analysis()
    xla = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "alias", "temp")}
    xla["peak"] = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
    cost = _first(compiled.cost_analysis()) or {}
    xla_flops = float(cost.get("flops", 0.0))
    dot_flops, loops = jaxpr_flops(traced.jaxpr)
    n_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params))
    tokens = math.prod(batch["tokens"].shape[:2]) if "tokens" in batch and batch["tokens"].ndim >= 2 else None
    acc = ACCELERATORS[accelerator]
    peak = acc.fp32_flops if str(config.get("precision", "fp32")) == "fp32" else acc.bf16_flops
    flops_dev = dot_flops / n_dev if loops else xla_flops
    step_s = flops_dev / (peak * float(utilization))
    hbm = acc.hbm_bytes
    return {
        "config": {"task": config.task.name, "mesh": list(mesh), "devices": n_dev, "global_batch_size": gbs,
                   "accumulate_steps": int(config.train.accumulate_steps),
                   "precision": str(config.get("precision", "fp32")), "scan_layers": bool(config.get("scan_layers", False)),
                   "remat": str(config.get("remat", "none")),
                   "batch": {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}},
        "params": int(n_params),
        "per_device_bytes": {"params": shard_bytes(state.params), "opt_state": shard_bytes(state.opt_state),
                             "ema": shard_bytes(state.ema_params) if state.ema_params is not None else 0,
                             "other_state": shard_bytes((state.step, state.rng))},
        "xla_cpu_memory_per_device": xla,
        "flops": {"xla_per_device": xla_flops, "jaxpr_matmul_total": dot_flops,
                  "six_params_tokens": 6.0 * n_params * tokens if tokens else None,
                  "per_device_used": flops_dev, "total_used": flops_dev * n_dev,
                  "loops": loops},
        "tokens_per_step": tokens, "examples_per_step": gbs,
        "estimate": {"accelerator": accelerator, "utilization": float(utilization), "peak_flops": peak,
                     "step_seconds": step_s, "tokens_per_second": tokens / step_s if tokens else None,
                     "examples_per_second": gbs / step_s,
                     "hbm_bytes": hbm, "fits": bool(xla["peak"] <= hbm)},
        "seconds": {"build": t1 - t0, "lower_and_compile": t2 - t1},
    }


def _gib(b) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1, e.g. ``"1.50 GiB"``."""
    for unit, size in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= size:
            return f"{b / size:.2f} {unit}"
    return f"{int(b)} B"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3e}"


def format_report(r: dict) -> str:
    """The plan as the lines ``python -m diffjax plan`` prints."""
    c, b, x, f, e = r["config"], r["per_device_bytes"], r["xla_cpu_memory_per_device"], r["flops"], r["estimate"]
    lines = [
        f"plan: task {c['task']}, mesh {c['mesh'][0]}x{c['mesh'][1]} ({c['devices']} devices), global batch "
        f"{c['global_batch_size']} (accumulate {c['accumulate_steps']}), precision {c['precision']}, "
        f"scan_layers {c['scan_layers']}, remat {c['remat']}",
        "batch: " + ", ".join(f"{k} {tuple(s)} {d}" for k, (s, d) in c["batch"].items()),
        f"params: {r['params']:,}",
        "per device (from the state shardings):",
        f"  params       {_gib(b['params'])} ({b['params']:,} bytes)",
        f"  optimizer    {_gib(b['opt_state'])} ({b['opt_state']:,} bytes)",
        f"  ema          {_gib(b['ema'])} ({b['ema']:,} bytes)",
        f"  other state  {_gib(b['other_state'])} ({b['other_state']:,} bytes)",
        "per device, XLA:CPU's estimate for the sharded program (memory_analysis):",
        f"  arguments {_gib(x['argument'])}, outputs {_gib(x['output'])}, aliased {_gib(x['alias'])}, "
        f"temporaries {_gib(x['temp'])}; peak {_gib(x['peak'])}",
        f"FLOPs per step: XLA per device {_num(f['xla_per_device'])} (x{c['devices']} = "
        f"{_num(f['xla_per_device'] * c['devices'])}); jaxpr matmuls, all devices {_num(f['jaxpr_matmul_total'])}; "
        f"6*params*tokens {_num(f['six_params_tokens'])}",
    ]
    if f["loops"]:
        lines.append(f"  ({f['loops']} loops (scan / while): XLA counts a loop body once, so the estimate below uses "
                     f"the jaxpr count / devices)")
    rate = (f"{e['tokens_per_second']:.4g} tokens/s" if e["tokens_per_second"] is not None
            else f"{e['examples_per_second']:.4g} examples/s")
    lines += [
        f"on {e['accelerator']} at {e['utilization']:.0%} of {e['peak_flops'] / 1e12:g} TFLOP/s "
        f"({c['precision']}): {e['step_seconds']:.4g} s/step, {rate}",
        f"fits: {'yes' if e['fits'] else 'no'} ({x['peak'] / GIB:.2f} GiB of {e['hbm_bytes'] / GIB:.2f} GiB HBM "
        f"per device)",
        f"(build {r['seconds']['build']:.1f} s, lower + compile {r['seconds']['lower_and_compile']:.1f} s)",
    ]
    return "\n".join(lines)


def write_json(report: dict, path: str, *, overwrite: bool = False) -> str:
    """Writes ``report`` to ``path`` (never over an existing file unless ``overwrite``)."""
    check_json_path(path, overwrite)
    mode = "w" if overwrite else "x"
    with open(path, mode) as fh:
        json.dump(report, fh, indent=2, sort_keys=True)
    return path


def child_env(devices: int, environ: dict | None = None) -> dict:
    """The environment of the re-executed ``plan``: ``devices`` fake CPU devices, JAX on CPU."""
    env = dict(os.environ if environ is None else environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={int(devices)}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env[CHILD_MARKER] = "1"
    return env


CHILD_MARKER = "DIFFJAX_PLAN_CHILD"
