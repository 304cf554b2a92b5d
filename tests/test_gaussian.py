"""Gaussian diffusion math vs closed forms, brute-force Bayes and Python loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import gaussian as G
from diffjax.diffusion import reconstruction as R
from diffjax.diffusion.schedules import gaussian_schedule

SCHED = gaussian_schedule("linear", 100)


def _np(a):
    return np.asarray(a, np.float64)


def test_q_sample_monte_carlo_moments():
    """x_t | x_0 ~ N(sqrt(abar_t) x_0, 1 - abar_t): check mean and variance per t by Monte Carlo."""
    n = 20000
    x0 = jnp.array([1.5, -0.7, 0.0])
    ts = jnp.array([1, 10, 50, 100])
    noise = jax.random.normal(jax.random.PRNGKey(0), (ts.shape[0], n, 3))
    # t per example ([B]) with B = n * len(ts) flattened.
    t_b = jnp.repeat(ts, n)
    xt = jax.jit(G.q_sample)(SCHED, jnp.broadcast_to(x0, (t_b.shape[0], 3)), t_b, noise.reshape(-1, 3))
    xt = _np(xt).reshape(ts.shape[0], n, 3)
    abar = _np(SCHED.alpha_bars)[np.asarray(ts)]
    mean_want = np.sqrt(abar)[:, None] * _np(x0)[None]
    var_want = np.broadcast_to((1 - abar)[:, None], mean_want.shape)
    se_mean = np.sqrt(var_want / n)
    assert np.all(np.abs(xt.mean(1) - mean_want) < 5 * se_mean + 1e-7)
    np.testing.assert_allclose(xt.var(1), var_want, rtol=5 * np.sqrt(2 / n))


def test_q_sample_scalar_t_broadcasts_over_trailing_dims():
    x0 = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 6))
    eps = jax.random.normal(jax.random.PRNGKey(2), (4, 5, 6))
    a = G.q_sample(SCHED, x0, 37, eps)
    b = G.q_sample(SCHED, x0, jnp.full((4,), 37), eps)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, np.sqrt(SCHED.alpha_bars[37]) * x0 + np.sqrt(1 - SCHED.alpha_bars[37]) * eps, rtol=1e-5)
    with pytest.raises(ValueError, match="B = x.shape"):
        G.q_sample(SCHED, x0, jnp.ones((3,), jnp.int32), eps)
    with pytest.raises(TypeError, match="integer"):
        G.q_sample(SCHED, x0, 3.0, eps)


@pytest.mark.parametrize("t", [2, 5, 30, 100])
def test_posterior_matches_brute_force_bayes_on_grid(t):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0), integrated numerically on a 1-D grid."""
    x0, xt = 0.8, -0.3
    sch = _np(SCHED.betas), _np(SCHED.alphas), _np(SCHED.alpha_bars)
    beta, alpha, abar_prev = sch[0][t], sch[1][t], sch[2][t - 1]
    width = 12 * np.sqrt(min(beta, 1 - abar_prev))
    centre = xt / np.sqrt(alpha)
    y = np.linspace(centre - width - 2, centre + width + 2, 400001)
    logp = -((xt - np.sqrt(alpha) * y) ** 2) / (2 * beta) - (y - np.sqrt(abar_prev) * x0) ** 2 / (2 * (1 - abar_prev))
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean_bf = (w * y).sum()
    var_bf = (w * (y - mean_bf) ** 2).sum()
    mean, var = jax.jit(G.posterior_mean_variance)(SCHED, jnp.array([[x0]]), jnp.array([[xt]]), jnp.array([t]))
    np.testing.assert_allclose(float(mean[0, 0]), mean_bf, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(var[0, 0]), var_bf, rtol=1e-3)


def test_posterior_at_t1_is_the_clean_data():
    x0 = jax.random.normal(jax.random.PRNGKey(3), (2, 3))
    xt = jax.random.normal(jax.random.PRNGKey(4), (2, 3))
    mean, var = G.posterior_mean_variance(SCHED, x0, xt, jnp.array([1, 1]))
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    np.testing.assert_allclose(var, 0.0, atol=1e-12)
    assert var.shape == (2, 1)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_eps_x0_v_round_trips(kind):
    sch = gaussian_schedule(kind, 100)
    k = jax.random.split(jax.random.PRNGKey(5), 3)
    x0 = jax.random.normal(k[0], (64, 3, 4))
    eps = jax.random.normal(k[1], (64, 3, 4))
    t = jax.random.randint(k[2], (64,), 1, 91)  # abar stays well away from 0 (float32 conditioning)
    xt = G.q_sample(sch, x0, t, eps)
    v = G.v_from_x0_eps(sch, x0, t, eps)
    tol = dict(rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(G.x0_from_eps(sch, xt, t, eps), x0, **tol)
    np.testing.assert_allclose(G.eps_from_x0(sch, xt, t, x0), eps, **tol)
    np.testing.assert_allclose(G.x0_from_v(sch, xt, t, v), x0, **tol)
    np.testing.assert_allclose(G.eps_from_v(sch, xt, t, v), eps, **tol)
    abar = _np(sch.alpha_bars)[np.asarray(t)][:, None, None]
    np.testing.assert_allclose(v, np.sqrt(abar) * _np(eps) - np.sqrt(1 - abar) * _np(x0), **tol)
    for pred, name in [(x0, "x0"), (eps, "eps"), (v, "v")]:
        x0_hat, eps_hat = jax.jit(G.x0_eps_from_prediction, static_argnums=4)(sch, xt, t, pred, name)
        np.testing.assert_allclose(x0_hat, x0, **tol)
        np.testing.assert_allclose(eps_hat, eps, **tol)
    with pytest.raises(ValueError, match="prediction must be one of"):
        G.x0_eps_from_prediction(sch, xt, t, v, "score")


# ---------------------------------------------------------------------------------------------
# Losses with the Bayes-optimal denoiser for Gaussian data x0 ~ N(mu, s^2).

MU, S = 0.4, 0.7


def _optimal_x0(sch):
    def f(xt, t):
        abar = sch.alpha_bars[t].reshape((-1,) + (1,) * (xt.ndim - 1))
        a, b2 = jnp.sqrt(abar), 1 - abar
        return MU + a * S**2 / (a * a * S**2 + b2) * (xt - a * MU)

    return f


@pytest.mark.parametrize("t", [3, 40])
def test_x0_and_eps_loss_of_optimal_denoiser_equal_posterior_variances(t):
    """At fixed t the optimal x0 loss is Var(x0|x_t) = s^2 b^2 / V and the eps loss Var(eps|x_t) = a^2 s^2 / V."""
    n = 40000
    x0 = MU + S * jax.random.normal(jax.random.PRNGKey(6), (n, 1))
    f = _optimal_x0(SCHED)
    abar = float(SCHED.alpha_bars[t])
    V = abar * S**2 + 1 - abar
    rng = jax.random.PRNGKey(7)
    lx, aux = jax.jit(lambda x, r: G.x0_loss(f, x, r, schedule=SCHED, t=t))(x0, rng)
    le, _ = jax.jit(lambda x, r: G.eps_loss(f, x, r, schedule=SCHED, t=t, prediction="x0"))(x0, rng)
    np.testing.assert_allclose(float(lx), S**2 * (1 - abar) / V, rtol=4 * np.sqrt(2 / n))
    np.testing.assert_allclose(float(le), abar * S**2 / V, rtol=4 * np.sqrt(2 / n))
    assert aux["per_example"].shape == (n,) and np.all(np.asarray(aux["t"]) == t)


def test_loss_samples_t_uniformly_over_1_to_T_and_splits_rng():
    x0 = jnp.zeros((5000, 2))
    _, aux = G.x0_loss(lambda x, t: x, x0, jax.random.PRNGKey(8), schedule=SCHED)
    t = np.asarray(aux["t"])
    assert t.min() == 1 and t.max() == 100 and abs(t.mean() - 50.5) < 2.0
    # t and noise come from different keys: the noise is not a function of t's draw.
    _, aux2 = G.x0_loss(lambda x, t: x, x0, jax.random.PRNGKey(9), schedule=SCHED)
    assert not np.array_equal(t, np.asarray(aux2["t"]))


def test_loss_mask_and_reduction():
    k = jax.random.split(jax.random.PRNGKey(10), 2)
    x0 = jax.random.normal(k[0], (3, 4, 5))
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool)
    f = lambda x, t: 0.3 * x  # noqa: E731
    loss, aux = G.x0_loss(f, x0, k[1], schedule=SCHED, mask=mask)
    err = _np(jnp.square(aux["x0_hat"] - x0))
    m = np.asarray(mask, np.float64)[..., None]
    want = (err * m).sum((1, 2)) / (m.sum((1, 2)) * 5)
    np.testing.assert_allclose(aux["per_example"], want, rtol=1e-5)
    np.testing.assert_allclose(loss, want.mean(), rtol=1e-5)
    _, aux_s = G.x0_loss(f, x0, k[1], schedule=SCHED, mask=mask, reduction="sum")
    np.testing.assert_allclose(aux_s["per_example"], (err * m).sum((1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="prefix"):
        G.x0_loss(f, x0, k[1], schedule=SCHED, mask=mask[:, :3])


def test_sum_last_mean_tokens_is_paper000_L_d():
    """L_d = mean over (non-padding) tokens of ||x0_hat_l - x0_l||^2, the norm summed over the embedding dim."""
    err = np.zeros((2, 3, 4), np.float32)
    err[0] = [[1, 2, 3, 4], [0, 0, 0, 1], [9, 9, 9, 9]]  # token sums 10, 1, 36
    err[1] = [[1, 1, 1, 1], [2, 2, 2, 2], [0, 0, 0, 0]]  # token sums 4, 8, 0
    mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    got = G.per_example_error(jnp.asarray(err), jnp.asarray(mask), "sum_last_mean_tokens")
    np.testing.assert_allclose(got, [(10 + 1) / 2, (4 + 8 + 0) / 3], rtol=1e-6)
    np.testing.assert_allclose(G.per_example_error(jnp.asarray(err), None, "sum_last_mean_tokens"),
                               [47 / 3, 12 / 3], rtol=1e-6)
    # D times "mean" (the old, 1/D-scaled value), and "sum" for [B, D] features
    np.testing.assert_allclose(got, 4 * G.per_example_error(jnp.asarray(err), jnp.asarray(mask), "mean"), rtol=1e-6)
    np.testing.assert_allclose(G.per_example_error(jnp.asarray(err[:, 0]), None, "sum_last_mean_tokens"), [10, 4])
    np.testing.assert_allclose(G.per_example_error(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), bool),
                                                   "sum_last_mean_tokens"), [0, 0])
    with pytest.raises(ValueError, match="last, summed axis"):
        G.per_example_error(jnp.asarray(err), jnp.ones((2, 3, 4), bool), "sum_last_mean_tokens")
    with pytest.raises(ValueError, match="reduction"):
        G.per_example_error(jnp.asarray(err), None, "token_mean")
    # through the loss and the reconstruction score
    k = jax.random.split(jax.random.PRNGKey(30), 2)
    x0 = jax.random.normal(k[0], (2, 3, 4))
    f = lambda x, t: 0.5 * x + 0.1  # noqa: E731
    _, aux = G.x0_loss(f, x0, k[1], schedule=SCHED, mask=jnp.asarray(mask), reduction="sum_last_mean_tokens")
    e = np.square(np.asarray(aux["x0_hat"], np.float64) - np.asarray(x0, np.float64)).sum(-1)
    np.testing.assert_allclose(aux["per_example"], (e * mask).sum(1) / mask.sum(1), rtol=1e-5)
    rec = R.reconstruct(f, x0, 20, k[1], schedule=SCHED)
    e = np.square(np.asarray(rec, np.float64) - np.asarray(x0, np.float64)).sum(-1)
    got = R.reconstruction_error(f, x0, 20, k[1], schedule=SCHED, mask=jnp.asarray(mask), reduction="sum_last_mean_tokens")
    np.testing.assert_allclose(got, (e * mask).sum(1) / mask.sum(1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Reconstruction error.


def _toy_denoiser(x, t):
    """Nonlinear, t-dependent x0-predictor (a stand-in for a trained network)."""
    tt = t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.tanh(x) * (1 - tt / 200.0) + 0.01 * tt


@pytest.mark.parametrize("ddim_steps,prediction", [(0, "x0"), (3, "x0"), (2, "eps"), (3, "v")])
def test_reconstruction_vmapped_sweep_equals_python_loop(ddim_steps, prediction):
    x0 = jax.random.normal(jax.random.PRNGKey(11), (6, 7))
    rng = jax.random.PRNGKey(12)
    ts = jnp.array([1, 2, 5, 10, 50, 90])
    kw = dict(schedule=SCHED, ddim_steps=ddim_steps, prediction=prediction, eta=1.0)
    score = lambda t: R.reconstruction_error(_toy_denoiser, x0, t, rng, **kw)  # noqa: E731
    swept = jax.jit(jax.vmap(score))(ts)
    score_j = jax.jit(score)  # one compile for the loop; t is a traced scalar, called per t
    loop = np.stack([np.asarray(score_j(jnp.int32(t))) for t in ts])
    assert swept.shape == (6, 6)
    np.testing.assert_allclose(swept, loop, rtol=1e-5, atol=1e-6)
    # Different t give different scores (the sweep is not constant).
    assert np.unique(np.round(np.asarray(swept[:, 0]), 6)).size == len(ts)


def test_reconstruction_one_step_matches_hand_computation_and_sum_reduction():
    x0 = jax.random.normal(jax.random.PRNGKey(13), (4, 3))
    rng = jax.random.PRNGKey(14)
    noise_rng, _ = jax.random.split(rng)
    eps = jax.random.normal(noise_rng, x0.shape)
    t = 20
    xt = np.sqrt(SCHED.alpha_bars[t]) * x0 + np.sqrt(1 - SCHED.alpha_bars[t]) * eps
    want = np.sum((_np(x0) - _np(_toy_denoiser(xt, jnp.full((4,), t)))) ** 2, axis=1)
    got = R.reconstruction_error(_toy_denoiser, x0, t, rng, schedule=SCHED, reduction="sum")
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
@pytest.mark.parametrize("ddim_steps,eta", [(0, 1.0), (3, 0.0), (4, 1.0)])
def test_oracle_denoiser_reconstructs_exactly(prediction, ddim_steps, eta):
    """A denoiser that knows x0 (in any parameterisation) gives zero error, one-step or DDIM chain."""
    x0 = jax.random.normal(jax.random.PRNGKey(15), (5, 4))

    def oracle(xt, t):
        eps = G.eps_from_x0(SCHED, xt, t, x0)
        return {"x0": x0, "eps": eps, "v": G.v_from_x0_eps(SCHED, x0, t, eps)}[prediction]

    err = jax.jit(
        lambda t, r: R.reconstruction_error(oracle, x0, t, r, schedule=SCHED, prediction=prediction, ddim_steps=ddim_steps, eta=eta)
    )(jnp.array([1, 5, 10, 60, 100]), jax.random.PRNGKey(16))
    np.testing.assert_allclose(err, 0.0, atol=1e-8)
    # ... while a wrong denoiser does not.
    bad = R.reconstruction_error(lambda x, t: 0.5 * x, x0, 10, jax.random.PRNGKey(16), schedule=SCHED, ddim_steps=ddim_steps)
    assert np.all(np.asarray(bad) > 1e-3)
