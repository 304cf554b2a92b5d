"""RuntimeContext: evaluation / generation / scoring on a 2x2 mesh equal the 1-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.runtime import RuntimeContext
from diffjax.tasks.base import build_task
from diffjax.train import sharding as sh
from diffjax.train import trainer
from tests._config_util import small_config


def contexts():
    one = RuntimeContext(Mesh(np.asarray(jax.devices()[:1], dtype=object).reshape(1, 1), ("data", "model")))
    two_by_two = RuntimeContext(sh.make_mesh((2, 2)))
    return one, two_by_two


def test_map_batches_pads_orders_and_reports_indices():
    _, ctx = contexts()
    seen = []

    def fn(batch, index):
        seen.append((batch["x"].shape, batch["x"].sharding.spec, np.asarray(index)))
        return {"y": batch["x"][:, 0] * 10 + 1, "i": index}

    x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    out = ctx.map_batches(fn, {"x": x}, batch_size=3)  # rounded up to 4 (data axis 2)
    np.testing.assert_array_equal(out["y"], x[:, 0] * 10 + 1)
    np.testing.assert_array_equal(out["i"], np.arange(7))
    assert [s[0] for s in seen] == [(4, 3), (4, 3)]
    assert seen[0][1][0] == "data"  # the global batch really is sharded over the data axis
    np.testing.assert_array_equal(seen[1][2], [4, 5, 6, 7])  # the pad example gets index N
    with pytest.raises(ValueError, match="leading"):
        ctx.map_batches(fn, {"a": np.zeros(3), "b": np.zeros(4)}, batch_size=2)
    assert ctx.round_batch_size(1) == 2 and ctx.round_batch_size(5) == 6


def test_scoring_on_2x2_mesh_equals_one_device():
    """A reconstruction-style score with per-example noise (fold_in(rng, index)) and params sharded
    over "model": the same scores on 1 device and on a 2x2 mesh, whatever the batch size."""
    schedule = gaussian_schedule("linear", 100)
    rng = jax.random.PRNGKey(3)
    w = jax.random.normal(jax.random.PRNGKey(0), (8, 8)) / 3

    def score(params, batch, index):
        def one(x, i):
            t = 10
            noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
            xt = jnp.sqrt(schedule.alpha_bars[t]) * x + jnp.sqrt(1 - schedule.alpha_bars[t]) * noise
            x0_hat = jnp.tanh(xt @ params)
            return jnp.sum((x0_hat - x) ** 2, -1).mean()  # [L, D] -> sum over D, mean over L

        return jax.vmap(one)(batch, index)

    x = np.random.default_rng(0).standard_normal((11, 5, 8)).astype(np.float32)
    step = jax.jit(score)
    results = []
    for ctx, bs in zip(contexts() + contexts(), (4, 4, 11, 6)):
        params = jax.device_put(w, jax.sharding.NamedSharding(ctx.mesh, jax.sharding.PartitionSpec(None, "model")))
        results.append(ctx.map_batches(lambda b, i: step(params, b, i), x, batch_size=bs))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-6, atol=1e-6)


def test_generation_on_2x2_mesh_equals_one_device():
    """gaussian2d's DDIM generation through the task API: same samples on both meshes."""
    config = small_config(**{"task.eval_num_samples": 10, "task.sample_batch_size": 4})
    task = build_task(config.task)
    params = task.init_params(jax.random.PRNGKey(0))
    rng = jax.random.PRNGKey(7)
    out = []
    for ctx in contexts():
        p = jax.device_put(params, sh.param_shardings(params, config.sharding_rules, ctx.mesh))
        out.append(task.sample(p, rng, 10, context=ctx))
    assert out[0].shape == (10, 2) and np.isfinite(out[0]).all()
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-6)


def test_trainer_hands_tasks_its_context(tmp_path):
    config = small_config(**{"mesh_shape": (2, 2), "train.num_steps": 2, "train.eval_at_end": False,
                             "task.eval_num_samples": 8})
    trainer.train(config, str(tmp_path))
    res = trainer.run_task_method(config, str(tmp_path), "generate")
    assert res["num_samples"] == 8
    setup = trainer.build(config)
    assert setup.context.mesh.shape == {"data": 2, "model": 2} and setup.context.is_main


def test_ood_sweep_on_2x2_mesh_equals_unsharded():
    """The shared OOD timestep sweep (text-shaped inputs with a mask) through a context: the
    scores of the unsharded chunked call, on 1 device and on a 2x2 mesh."""
    from diffjax.ood import sweep

    schedule = gaussian_schedule("linear", 100)
    w = jax.random.normal(jax.random.PRNGKey(0), (8, 8)) / 3

    def score_fn(params, inp, t, keys):
        eps = jax.vmap(lambda k: jax.random.normal(k, inp["x"].shape[1:]))(keys)
        ab = schedule.alpha_bars[t][:, None, None]
        x0_hat = jnp.tanh((jnp.sqrt(ab) * inp["x"] + jnp.sqrt(1 - ab) * eps) @ params)
        m = inp["mask"].astype(jnp.float32)
        l_d = jnp.sum(jnp.sum((x0_hat - inp["x"]) ** 2, -1) * m, -1) / jnp.sum(m, -1)
        return {"l_d": l_d}

    rng = np.random.default_rng(1)
    inputs = {"x": rng.standard_normal((9, 6, 8)).astype(np.float32),
              "mask": np.arange(6)[None, :] < rng.integers(2, 7, size=(9, 1))}
    fn = sweep.make_score_sweep(score_fn)
    keys = sweep.seed_keys(0, 2)
    ref = sweep.sweep_chunked(fn, w, inputs, [5, 50], keys, chunk=4)
    for ctx in contexts():
        got = sweep.sweep_chunked(fn, w, inputs, [5, 50], keys, chunk=4, context=ctx)
        assert got["l_d"].shape == (2, 2, 9)
        np.testing.assert_allclose(got["l_d"], ref["l_d"], rtol=1e-6)
