"""Mesh / rule-table shardings, global batches, mesh-invariance of one train step, and a 2-process
``jax.distributed`` run equal to a 1-process run with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from diffjax.checkpoints.orbax import Checkpointer
from diffjax.train import sharding as sh
from diffjax.train import trainer
from tests._config_util import small_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "gaussian2d.py")


def test_resolve_mesh_shape():
    assert sh.resolve_mesh_shape((-1, 1), 4) == (4, 1)
    assert sh.resolve_mesh_shape((2, -1), 4) == (2, 2)
    assert sh.resolve_mesh_shape((1, 1), 4) == (1, 1)
    with pytest.raises(ValueError, match="needs 8 devices; 4 available"):
        sh.resolve_mesh_shape((4, 2), 4)
    with pytest.raises(ValueError, match="do not divide by 3"):
        sh.resolve_mesh_shape((-1, 3), 4)
    mesh = sh.make_mesh((2, 2))
    assert mesh.axis_names == ("data", "model") and mesh.shape == {"data": 2, "model": 2}


def test_a_mesh_too_big_fails_before_the_task_reads_anything(monkeypatch):
    """``trainer.build`` makes the mesh before it builds the task, so a ``mesh_shape`` the devices cannot hold
    is the first error, before any data set or weight is read."""
    def no_task(*a, **k):
        raise AssertionError("the task was built before the mesh was checked")

    monkeypatch.setattr(trainer, "build_task", no_task)
    config = small_config(mesh_shape=(4, 2))
    with pytest.raises(ValueError, match="needs 8 devices; 4 available"):
        trainer.build(config)


def test_rule_table_first_match_default_replicated_and_errors():
    mesh = sh.make_mesh((2, 2))
    rules = ((r"attn/(query|key)/kernel$", (None, "model")), (r"kernel$", ("model", None)))
    params = {"attn": {"query": {"kernel": jnp.zeros((4, 6))}, "out": {"kernel": jnp.zeros((6, 4))}},
              "ln": {"scale": jnp.zeros(4)}}
    s = sh.param_shardings(params, rules, mesh)
    assert s["attn"]["query"]["kernel"].spec == P(None, "model")  # first rule wins over the second
    assert s["attn"]["out"]["kernel"].spec == P("model", None)
    assert s["ln"]["scale"].spec == P()  # no rule: replicated
    with pytest.raises(ValueError, match=r"'bad/kernel' shape \(3, 4\): dim 3 is not divisible by mesh axis 'model'"):
        sh.param_shardings({"bad": {"kernel": jnp.zeros((3, 4))}}, rules, mesh)
    with pytest.raises(ValueError, match="has 3 entries"):
        sh.param_shardings({"k": jnp.zeros((4,))}, ((r"k", (None, None, "model")),), mesh)
    with pytest.raises(ValueError, match="'modle' is not one of"):
        sh.param_shardings(params, ((r"kernel", (None, "modle")),), mesh)


def test_optimizer_state_mirrors_param_shardings():
    mesh = sh.make_mesh((2, 2))
    params = {"dense": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)}}
    ps = sh.param_shardings(params, ((r"kernel", (None, "model")),), mesh)
    opt_state = jax.eval_shape(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init, params)
    os_ = sh.mirror_shardings(opt_state, params, ps, mesh)
    adam = os_[1][0]
    assert adam.mu["dense"]["kernel"].spec == P(None, "model")
    assert adam.nu["dense"]["kernel"].spec == P(None, "model")
    assert adam.mu["dense"]["bias"].spec == P()
    assert adam.count.spec == P()


def test_global_batch_from_local_data():
    mesh = sh.make_mesh((2, 2))
    local = {"x": np.arange(24, dtype=np.float32).reshape(8, 3)}
    shardings = sh.batch_shardings(local, mesh)
    batch = sh.global_batch(local, shardings, 8)
    assert batch["x"].shape == (8, 3) and batch["x"].sharding.spec == P("data")
    np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])
    # Each "data" row of the mesh holds its own half of the batch.
    shard_rows = {tuple(np.asarray(s.data)[:, 0]) for s in batch["x"].addressable_shards}
    assert shard_rows == {(0.0, 3.0, 6.0, 9.0), (12.0, 15.0, 18.0, 21.0)}
    with pytest.raises(ValueError, match="must divide by the mesh 'data' axis"):
        sh.check_batch_divisibility(6, sh.make_mesh((4, 1)))


def _one_step(mesh_shape):
    # No warmup: the first step must move the params (lr(0) = 0 under warmup).
    config = small_config(mesh_shape=mesh_shape, **{"train.global_batch_size": 16, "optimizer.warmup_steps": 0})
    setup = trainer.build(config)
    state = setup.init_state()
    p0 = jax.device_get(state.params)  # host copy: the step donates `state`
    local = next(setup.task.train_batches(0, global_batch_size=16))
    step = setup.train_step
    batch = setup.context.global_batch(local, 16)
    new, metrics = step(state, batch)
    return new, jax.device_get(metrics), p0


def test_one_step_is_mesh_invariant():
    """Acceptance: loss and updated params of one step agree to 1e-5 on meshes (4,1), (2,2), (1,1)."""
    results = {m: _one_step(m) for m in [(4, 1), (2, 2), (1, 1)]}
    ref_state, ref_metrics, p0 = results[(1, 1)]
    sharded = results[(2, 2)][0].params["hidden_0"]["kernel"]
    assert sharded.sharding.spec == P(None, "model")  # really split over "model" ...
    assert len({str(s.index) for s in sharded.addressable_shards}) == 2
    assert results[(4, 1)][0].params["hidden_0"]["kernel"].sharding.spec == P(None, "model")
    for m in [(4, 1), (2, 2)]:
        state, metrics, _ = results[m]
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref_state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # The step did move the params (otherwise the comparison would be vacuous).
    assert np.abs(np.asarray(p0["hidden_0"]["kernel"]) - np.asarray(ref_state.params["hidden_0"]["kernel"])).max() > 1e-4
    assert not np.allclose(np.asarray(p0["hidden_0"]["kernel"]), np.asarray(ref_state.params["hidden_0"]["kernel"]))


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(workdir) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """Acceptance: 2 processes x 2 CPU devices (jax.distributed on localhost) on a (2,2) mesh with
    ``sharding="fsdp+tp"`` (the "data" axis across the processes: each hidden kernel split over both)
    train 5 steps to the same losses and params as 1 process x 4 devices on (4,1) "tp"."""
    workdir = tmp_path / "dist"
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAX_DEFAULT_MATMUL_PRECISION="highest")
    common = [sys.executable, "-m", "diffjax", "train", f"--config={CONFIG}:small", f"--workdir={workdir}",
              "--config.train.num_steps=5", "--config.train.eval_at_end=False", "--config.mesh_shape=(2,2)",
              "--config.sharding=fsdp+tp", "--config.task.model.hidden=128", "--config.train.log_every=1",
              "--config.distributed.initialize=True", f"--config.distributed.coordinator_address=localhost:{port}",
              "--config.distributed.num_processes=2"]
    procs = [subprocess.Popen(common + [f"--config.distributed.process_id={i}"], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "step 5/5" in outs[0] and "step 5/5" not in outs[1]  # only process 0 reports

    config = small_config(**{"train.num_steps": 5, "train.eval_at_end": False, "mesh_shape": (4, 1),
                             "task.model.hidden": 128, "train.log_every": 1})
    ref = trainer.train(config, str(tmp_path / "single"))
    dist_losses, ref_losses = _losses(workdir), _losses(tmp_path / "single")
    assert sorted(dist_losses) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([dist_losses[s] for s in range(1, 6)], [ref_losses[s] for s in range(1, 6)],
                               rtol=1e-5, atol=1e-6)
    setup = trainer.build(config)
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    try:
        assert ckpt.latest_step() == 5
        dist = ckpt.restore(5, setup.abstract_state)  # restored onto this process's (4,1) "tp" layout
    finally:
        ckpt.close()
    for a, b in zip(jax.tree_util.tree_leaves(dist.params), jax.tree_util.tree_leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
