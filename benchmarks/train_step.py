"""Train-step speed: the sharded jitted step on 4 (fake CPU) devices vs the same step on 1 device,
and the per-step dispatch overhead (tiny model, where compute is negligible).

    python benchmarks/train_step.py [--devices 4] [--iters 50]

Rows (gaussian2d MLP denoiser + AdamW + grad clipping + EMA, one ``jax.jit`` with in/out shardings):
  * ``step``   : the jitted step alone (batch already on device), ms/step, averaged over ``iters``
                 calls dispatched back to back (one block at the end).
  * ``loop``   : what the trainer loop does per step: host batch -> ``make_array_from_process_local_data``
                 -> step -> (lagged) finite check, ms/step.
Ratios are against mesh (1, 1) = the unsharded step on one device. Fake CPU devices share the
host's cores, so on CPU a sharded step is not expected to be faster; the figures measure the cost of
sharding / dispatch, the speed-up needs real accelerators. Prints the machine first
(``benchmarks/_machine.py``); writes JSON (``--json``, default benchmarks/results/train_step.json).
Needs ml_collections (the configs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_args = argparse.ArgumentParser()
_args.add_argument("--devices", type=int, default=4)
_args.add_argument("--iters", type=int, default=20)
_args.add_argument("--repeats", type=int, default=3)
_args.add_argument("--json", "--out", dest="json", default=None,
                   help="write the results here (default benchmarks/results/train_step.json)")
ARGS = _args.parse_args()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={ARGS.devices}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
import jax  # noqa: E402

from diffjax.cli import REPO_ROOT, _load_config_file  # noqa: E402
from diffjax.train import trainer  # noqa: E402


def config_for(mesh_shape, hidden, depth, batch):
    c = _load_config_file(os.path.join(REPO_ROOT, "configs", "gaussian2d.py"))
    with c.unlocked():
        c.mesh_shape = mesh_shape
        c.task.model.hidden = hidden
        c.task.model.depth = depth
        c.train.global_batch_size = batch
    return c


def time_it(fn, iters, repeats):
    fn(3)  # warm-up (compile) + 3 steps
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(iters)
        out.append((time.perf_counter() - t0) / iters * 1e3)
    return statistics.median(out)


def bench(mesh_shape, hidden, depth, batch):
    config = config_for(mesh_shape, hidden, depth, batch)
    setup = trainer.build(config)
    state = setup.init_state()
    batches = setup.task.train_batches(0, global_batch_size=batch)
    local = next(batches)
    step = setup.train_step
    g = setup.context.global_batch(local, batch)
    holder = {"state": state}

    def run_step(n):
        s = holder["state"]
        for _ in range(n):
            s, m = step(s, g)
        jax.block_until_ready(s)
        holder["state"] = s

    def run_loop(n):
        s, pending = holder["state"], None
        for _ in range(n):
            gb = setup.context.global_batch(next(batches), batch)
            s, m = step(s, gb)
            if pending is not None:
                bool(pending["finite"])
            pending = m
        bool(pending["finite"])
        jax.block_until_ready(s)
        holder["state"] = s

    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    return n_params, time_it(run_step, ARGS.iters, ARGS.repeats), time_it(run_loop, ARGS.iters, ARGS.repeats)


def main():
    info = _machine.machine_info()
    _machine.print_machine(info)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} devices, "
          f"{os.cpu_count()} host cores; {ARGS.iters} steps x {ARGS.repeats} repeats (median)")
    sizes = [("medium", 512, 4, 1024), ("tiny", 8, 1, 8)]
    meshes = [(1, 1), (ARGS.devices, 1), (2, ARGS.devices // 2)] if ARGS.devices >= 4 else [(1, 1), (ARGS.devices, 1)]
    header = f"{'model':8s} {'params':>8s} {'batch':>6s} {'mesh':>7s} {'step ms':>9s} {'x (1,1)':>8s} {'loop ms':>9s} {'x (1,1)':>8s}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, hidden, depth, batch in sizes:
        ref = None
        for mesh in meshes:
            n, t_step, t_loop = bench(mesh, hidden, depth, batch)
            ref = ref or (t_step, t_loop)
            rows.append({"model": name, "params": int(n), "batch": batch, "mesh": list(mesh), "step_ms": t_step,
                         "step_vs_1x1": t_step / ref[0], "loop_ms": t_loop, "loop_vs_1x1": t_loop / ref[1]})
            print(f"{name:8s} {n:8d} {batch:6d} {str(mesh):>7s} {t_step:9.3f} {t_step / ref[0]:8.2f} "
                  f"{t_loop:9.3f} {t_loop / ref[1]:8.2f}", flush=True)
    print("tiny-model rows = dispatch overhead per step (compute is ~0): 'step' = jit dispatch of the "
          "sharded step, 'loop' adds host batch assembly + the lagged NaN check.")
    _machine.write_json(ARGS.json or _machine.default_json_path("train_step"),
                        {"benchmark": "train_step", "devices": ARGS.devices, "iters": ARGS.iters,
                         "repeats": ARGS.repeats, "backend": jax.default_backend(), "rows": rows}, info)


if __name__ == "__main__":
    main()
