"""The vmapped t x seed sweep equals a Python loop; chunking does not change it; AUROC per t."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.schedules import gaussian_schedule
from diffjax.models.lfdn import LFDN
from diffjax.ood import metrics, scores, sweep

DIMS = (4, 6)


@pytest.fixture(scope="module")
def setup():
    model = LFDN(in_dim=sum(DIMS), width=16, num_blocks=2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10)), jnp.zeros((1,), jnp.int32))["params"]
    # non-zero outputs everywhere (zero-init layers would make every reconstruction 0)
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    apply = lambda p, x, t: model.apply({"params": p}, x, t)
    z0 = np.random.default_rng(0).normal(size=(9, 10)).astype(np.float32)
    return apply, params, z0, gaussian_schedule("scaled_linear", 100)


@pytest.mark.parametrize("ddim_steps", [0, 3])
def test_vmapped_sweep_equals_python_loop(setup, ddim_steps):
    apply, params, z0, sched = setup
    ts = [1, 10, 57]
    keys = sweep.seed_keys(0, 2)
    fn = sweep.make_sweep_fn(apply, sched, DIMS, ddim_steps=ddim_steps, per_layer=True)
    got = fn(params, jnp.asarray(z0), jnp.asarray(ts), keys, jnp.arange(9))
    assert got["mse"].shape == (3, 2, 9) and got["mfsim_layers"].shape == (3, 2, 2, 9)
    @jax.jit
    def single(t, key):  # one (t, seed) at a time, no vmap over t or seeds
        return scores.reconstruction_scores(lambda x, tt: apply(params, x, tt), sched, jnp.asarray(z0), t,
                                            scores.example_keys(key, jnp.arange(9)), DIMS, ddim_steps=ddim_steps)

    for i, t in enumerate(ts):
        for s in range(2):
            ref = single(t, keys[s])
            for k in ("mse", "mfsim", "mse_layers", "mfsim_layers"):
                np.testing.assert_allclose(np.asarray(got[k][i, s]), np.asarray(ref[k]), rtol=2e-5, atol=1e-5)
    # different seeds draw different noise; different t give different scores
    assert not np.allclose(got["mse"][:, 0], got["mse"][:, 1])
    assert not np.allclose(got["mse"][0], got["mse"][-1])


def test_chunked_equals_single_call(setup):
    apply, params, z0, sched = setup
    fn = sweep.make_sweep_fn(apply, sched, DIMS, ddim_steps=2)
    keys = sweep.seed_keys(5, 1)
    whole = sweep.sweep_chunked(fn, params, z0, [2, 8], keys)
    parts = sweep.sweep_chunked(fn, params, z0, [2, 8], keys, chunk=4)  # 4 + 4 + 1 (padded)
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], rtol=1e-5, atol=1e-6)
    # lax.map over t in groups (bounded memory) == vmap over all t
    mapped = sweep.make_sweep_fn(apply, sched, DIMS, ddim_steps=2, t_batch_size=1)
    by_map = sweep.sweep_chunked(mapped, params, z0, [2, 8], keys)
    for k in whole:
        np.testing.assert_allclose(by_map[k], whole[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ddim_steps", [0, 2])
def test_grid_value_at_t_is_bitwise_the_single_t_call(setup, ddim_steps):
    """With t_batch_size=1 every t is a flat batch of the single-t call's shape, so the sweep at t
    equals the call with ts=[t] (what the DLSR table runs) exactly, not just to rounding."""
    apply, params, z0, sched = setup
    keys = sweep.seed_keys(3, 2)
    fn = sweep.make_sweep_fn(apply, sched, DIMS, ddim_steps=ddim_steps, per_layer=True, t_batch_size=1)
    grid = sweep.sweep_chunked(fn, params, z0, [1, 10, 57], keys, chunk=5)
    one = sweep.sweep_chunked(fn, params, z0, [10], keys, chunk=5)
    assert grid["mse"].shape == (3, 2, 9) and grid["mse_layers"].shape == (3, 2, 2, 9)
    for k in one:
        np.testing.assert_array_equal(grid[k][1], one[k][0], err_msg=k)


def test_sweep_auroc_matches_metrics_per_t():
    rng = np.random.default_rng(0)
    id_s = rng.normal(size=(3, 2, 40))
    ood_s = rng.normal(size=(3, 2, 30)) + np.array([0.0, 1.0, 3.0])[:, None, None]
    got = sweep.sweep_auroc(id_s, ood_s)
    for i in range(3):
        assert got[i] == pytest.approx(metrics.ood_metrics(id_s[i].mean(0), ood_s[i].mean(0))["auroc"], abs=1e-6)
    assert got[0] < got[1] < got[2]


def test_plot_sweep_writes_png(tmp_path):
    p = tmp_path / "sweep.png"
    sweep.plot_sweep([1, 2, 3], {"a": np.array([0.5, 0.7, 0.6])}, str(p))
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
