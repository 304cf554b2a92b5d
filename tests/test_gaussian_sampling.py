"""DDPM / DDIM samplers with the exact denoiser for Gaussian data N(mu, s^2), and ddim_denoise_from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import reconstruction as R
from diffjax.diffusion import gaussian_sampling as GS  # noqa: N812
from diffjax.diffusion.schedules import gaussian_schedule

T = 200
SCHED = gaussian_schedule("cosine", T)
MU = np.array([0.5, -1.0])
S = np.array([0.3, 1.5])
N = 16384


def exact_denoiser(sch, prediction):
    """E[x0|x_t], E[eps|x_t], E[v|x_t] for x0 ~ N(MU, diag S^2), written out by hand (no diffjax conversions)."""
    mu, s2 = jnp.asarray(MU, jnp.float32), jnp.asarray(S**2, jnp.float32)

    def f(xt, t):
        abar = sch.alpha_bars[t][:, None]
        a, b = jnp.sqrt(abar), jnp.sqrt(1 - abar)
        V = a * a * s2 + b * b
        d = xt - a * mu
        x0 = mu + a * s2 / V * d
        eps = b / V * d
        return {"x0": x0, "eps": eps, "v": a * eps - b * x0}[prediction]

    return f


def _abar64(sch):
    return np.asarray(sch.alpha_bars, np.float64)


def ddim_affine_map(sch, taus):
    """DDIM(eta=0) with the exact denoiser is affine: x_0 = A * x_T + B (per dim); float64 recursion."""
    ab = _abar64(sch)
    A, B = np.ones_like(MU), np.zeros_like(MU)
    for t, tp in zip(taus[:-1], taus[1:]):
        a, b, a2, b2 = np.sqrt(ab[t]), np.sqrt(1 - ab[t]), np.sqrt(ab[tp]), np.sqrt(1 - ab[tp])
        V = a * a * S**2 + b * b
        c = (a * a2 * S**2 + b * b2) / V  # x_{t'} - a' mu = c (x_t - a mu)
        A, B = c * A, a2 * MU + c * (B - a * MU)
    return A, B


def test_ddim_eta0_exact_denoiser_is_the_exact_affine_map_and_recovers_data():
    k = jax.random.PRNGKey(0)
    x_T = jax.random.normal(jax.random.PRNGKey(1), (N, 2))
    sample = jax.jit(lambda r, x: GS.ddim_sample(exact_denoiser(SCHED, "x0"), SCHED, (N, 2), r, num_steps=T, eta=0.0, prediction="x0", x_T=x))
    out = np.asarray(sample(k, x_T), np.float64)
    A, B = ddim_affine_map(SCHED, GS.ddim_timesteps(T, T))
    np.testing.assert_allclose(out, A * np.asarray(x_T) + B, rtol=1e-3, atol=1e-3)
    # Deterministic: another rng, same x_T -> same samples.
    np.testing.assert_allclose(sample(jax.random.PRNGKey(2), x_T), out, atol=1e-6)
    # Reproduces the data distribution (up to the 200-step discretisation, <1.5% in std).
    assert np.all(np.abs(out.mean(0) - MU) < 4 * S / np.sqrt(N) + 1e-3), out.mean(0)
    np.testing.assert_allclose(out.std(0), S, rtol=0.03)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_same_result_for_every_parameterisation(prediction):
    x_T = jax.random.normal(jax.random.PRNGKey(3), (256, 2))
    run = lambda p: GS.ddim_sample(exact_denoiser(SCHED, p), SCHED, (256, 2), jax.random.PRNGKey(4), num_steps=25, eta=0.5, prediction=p, x_T=x_T)  # noqa: E731
    np.testing.assert_allclose(jax.jit(lambda: run(prediction))(), jax.jit(lambda: run("x0"))(), rtol=1e-3, atol=1e-3)


def _ddim_numpy(ab, x, t, tp, eps_hat, eta, z):
    """Song et al. 2021 eq. 12 with eq. 16's sigma, float64, for an eps prediction at step t -> tp."""
    x0_hat = (x - np.sqrt(1 - ab[t]) * eps_hat) / np.sqrt(ab[t])
    sigma = eta * np.sqrt((1 - ab[tp]) / (1 - ab[t])) * np.sqrt(1 - ab[t] / ab[tp])
    return np.sqrt(ab[tp]) * x0_hat + np.sqrt(1 - ab[tp] - sigma**2) * eps_hat + sigma * z


def _eps_fn(x, t):
    """Input- and time-dependent eps prediction (no closed form to hide behind)."""
    return jnp.tanh(x) * (t[:, None] / T) + 0.1 * x


def _eps_np(x, t):
    return np.tanh(x) * (t / T) + 0.1 * x


@pytest.mark.parametrize("eta", [0.3, 0.7])
def test_ddim_step_and_chain_with_0_lt_eta_lt_1_match_numpy(eta):
    ab = _abar64(SCHED)
    x = jax.random.normal(jax.random.PRNGKey(40), (5, 2))
    rng = jax.random.PRNGKey(41)
    t, tp = 120, 70
    got = GS.ddim_step(_eps_fn, SCHED, x, jnp.full((5,), t, jnp.int32), jnp.full((5,), tp, jnp.int32), rng,
                       eta=eta, prediction="eps")
    z = np.asarray(jax.random.normal(rng, x.shape), np.float64)  # the step's fixed noise draw
    x64 = np.asarray(x, np.float64)
    want = _ddim_numpy(ab, x64, t, tp, _eps_np(x64, t), eta, z)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-5, atol=2e-5)
    sigma = eta * np.sqrt((1 - ab[tp]) / (1 - ab[t])) * np.sqrt(1 - ab[t] / ab[tp])
    assert 0.05 < sigma < np.sqrt(1 - ab[tp])  # the noise term really matters, and eta < 1 keeps it partial
    # two steps 120 -> 70 -> 20: one key per step, split from rng
    chain = GS.ddim_denoise_along(_eps_fn, SCHED, x, jnp.array([t, tp, 20]), rng, eta=eta, prediction="eps")
    keys = jax.random.split(rng, 2)
    y = x64
    for (a, b), key in zip([(t, tp), (tp, 20)], keys):
        y = _ddim_numpy(ab, y, a, b, _eps_np(y, a), eta, np.asarray(jax.random.normal(key, x.shape), np.float64))
    np.testing.assert_allclose(np.asarray(chain, np.float64), y, rtol=5e-5, atol=5e-5)


def test_ddpm_exact_denoiser_matches_linear_gaussian_recursion_and_data():
    """DDPM with E[x0|x_t]: x_{t-1} = c x_t + const + N(0, beta~_t); track mean/var exactly, compare MC."""
    ab = _abar64(SCHED)
    betas = np.asarray(SCHED.betas, np.float64)
    m, v = np.zeros(2), np.ones(2)
    for t in range(T, 0, -1):
        a, b2, ap = np.sqrt(ab[t]), 1 - ab[t], ab[t - 1]
        k = a * S**2 / (a * a * S**2 + b2)
        c0 = betas[t] * np.sqrt(ap) / b2
        ct = (1 - ap) * np.sqrt(1 - betas[t]) / b2
        var_t = betas[t] * (1 - ap) / b2
        m = c0 * (MU + k * (m - a * MU)) + ct * m
        v = (c0 * k + ct) ** 2 * v + (var_t if t > 1 else 0.0)
    out = np.asarray(
        jax.jit(lambda r: GS.ddpm_sample(exact_denoiser(SCHED, "eps"), SCHED, (N, 2), r, prediction="eps"))(jax.random.PRNGKey(5)),
        np.float64,
    )
    se = np.sqrt(v / N)
    assert np.all(np.abs(out.mean(0) - m) < 4.5 * se), (out.mean(0), m)
    np.testing.assert_allclose(out.var(0), v, rtol=4.5 * np.sqrt(2 / N))
    # ... and the recursion's end point is the data distribution to within 4% in std (ancestral
    # sampling with beta~_t underestimates the reverse variance at finite T; 2.9% here for s = 0.3).
    np.testing.assert_allclose(np.sqrt(v), S, rtol=0.04)
    np.testing.assert_allclose(m, MU, atol=0.01)


def test_ddim_eta1_full_steps_equals_ddpm():
    """DDIM with eta = 1 on every step is DDPM ancestral sampling (Song et al. 2021, sec. 4.1)."""
    sch = gaussian_schedule("linear", 50)
    f = lambda x, t: jnp.tanh(x) * 0.8 + 0.01 * t[:, None]  # noqa: E731
    rng = jax.random.PRNGKey(6)
    a = jax.jit(lambda: GS.ddim_sample(f, sch, (64, 3), rng, num_steps=50, eta=1.0, prediction="x0"))()
    b = jax.jit(lambda: GS.ddpm_sample(f, sch, (64, 3), rng, prediction="x0"))()
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
    c = jax.jit(lambda: GS.ddpm_sample(f, sch, (64, 3), rng, prediction="x0", variance="beta"))()
    assert np.abs(np.asarray(c) - np.asarray(b)).max() > 1e-3  # the variance choice matters


def test_clip_x0_bounds_the_last_prediction():
    f = lambda x, t: 5.0 * x  # noqa: E731
    out = GS.ddim_sample(f, SCHED, (32, 2), jax.random.PRNGKey(7), num_steps=10, prediction="x0", clip_x0=1.0)
    assert np.abs(np.asarray(out)).max() <= 1.0 + 1e-6


def test_ddim_timesteps():
    np.testing.assert_array_equal(GS.ddim_timesteps(100, 4), [100, 75, 50, 25, 0])
    assert len(GS.ddim_timesteps(1000, 999)) == 1000
    with pytest.raises(ValueError, match="num_steps"):
        GS.ddim_timesteps(10, 11)


# ---------------------------------------------------------------------------------------------
# ddim_denoise_from (DLSR scoring).


def _toy(x, t):
    tt = t.astype(jnp.float32)[:, None]
    return jnp.tanh(x) * (1 - tt / 300.0)


def test_ddim_denoise_from_equals_manual_chain_of_steps():
    sch = gaussian_schedule("scaled_linear", 100)
    x = jax.random.normal(jax.random.PRNGKey(8), (4, 5))
    rng = jax.random.PRNGKey(9)
    t_start, K = jnp.array([10, 7, 3, 2]), 3
    got = jax.jit(lambda: GS.ddim_denoise_from(_toy, sch, x, t_start, K, rng, eta=1.0, prediction="x0"))()
    # by hand: tau_k = floor(t_start * k / K); per-step keys from split(rng, K)
    keys = jax.random.split(rng, K)
    want = x
    for i, k in enumerate(range(K, 0, -1)):
        t, tp = (t_start * k) // K, (t_start * (k - 1)) // K
        want = GS.ddim_step(_toy, sch, want, t, tp, keys[i], eta=1.0, prediction="x0")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # t_start = 2 with K = 3: taus 2, 1, 0, 0 -> two model steps then the identity
    x0_1 = _toy(x, jnp.full((4,), 2))
    assert not np.allclose(got[3], x0_1[3])  # more than one step was taken


def test_ddim_denoise_from_one_step_is_x0_prediction_and_t0_is_identity():
    x = jax.random.normal(jax.random.PRNGKey(10), (3, 4))
    out = GS.ddim_denoise_from(_toy, SCHED, x, 40, 1, jax.random.PRNGKey(11), eta=1.0, prediction="x0")
    np.testing.assert_allclose(out, _toy(x, jnp.full((3,), 40)), rtol=1e-6)
    same = GS.ddim_denoise_from(_toy, SCHED, x, jnp.array([0, 0, 5]), 3, jax.random.PRNGKey(11), eta=1.0, prediction="x0")
    np.testing.assert_allclose(same[:2], x[:2])
    assert np.all(np.isfinite(np.asarray(same)))


def test_ddim_denoise_from_vmap_over_t_start_equals_loop():
    sch = gaussian_schedule("scaled_linear", 100)
    x = jax.random.normal(jax.random.PRNGKey(12), (4, 5))
    fn = jax.jit(lambda t: GS.ddim_denoise_from(_toy, sch, x, t, 3, jax.random.PRNGKey(13), eta=1.0, prediction="eps"))
    ts = jnp.arange(1, 11)
    swept = jax.jit(jax.vmap(fn))(ts)
    loop = np.stack([np.asarray(fn(t)) for t in ts])
    np.testing.assert_allclose(swept, loop, rtol=1e-5, atol=1e-6)


def test_ddim_denoise_along_explicit_sequence_equals_ddim_sample():
    """A full DDIM run is the chain along ddim_timesteps from x_T (same per-step keys)."""
    sch = gaussian_schedule("linear", 60)
    f = lambda x, t: jnp.tanh(x) * 0.9  # noqa: E731
    rng = jax.random.PRNGKey(14)
    x_T = jax.random.normal(jax.random.PRNGKey(15), (8, 3))
    want = GS.ddim_sample(f, sch, (8, 3), rng, num_steps=6, eta=1.0, prediction="x0", x_T=x_T)
    _, loop_rng = jax.random.split(rng)
    taus = jnp.asarray(GS.ddim_timesteps(60, 6))
    got = jax.jit(lambda tt: GS.ddim_denoise_along(f, sch, x_T, tt, loop_rng, eta=1.0, prediction="x0"))(taus)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[K \+ 1\]"):
        GS.ddim_denoise_along(f, sch, x_T, jnp.array([[5, 0]]), loop_rng)


def test_reconstruction_gradients_are_finite_including_t0():
    """Identity steps (t_start = 0) must not leak NaNs into gradients (where-trick safety)."""
    sch = gaussian_schedule("scaled_linear", 100)
    x0 = jax.random.normal(jax.random.PRNGKey(16), (4, 5))

    def total(w):
        f = lambda x, t: jnp.tanh(w * x)  # noqa: E731
        errs = jax.vmap(lambda t: R.reconstruction_error(f, x0, t, jax.random.PRNGKey(17), schedule=sch, ddim_steps=3))(
            jnp.array([0, 1, 3, 10])
        )
        return errs.sum(), errs

    (val, errs), g = jax.jit(jax.value_and_grad(total, has_aux=True))(1.3)
    assert np.isfinite(float(g)) and abs(float(g)) > 0
    np.testing.assert_allclose(errs[0], 0.0, atol=1e-12)  # t = 0: nothing to reconstruct


def test_reconstruction_under_sharded_jit_equals_unsharded():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = np.array(jax.devices()[:4])
    if devices.size < 4:
        pytest.skip("needs the 4 fake CPU devices of conftest.py")
    mesh = Mesh(devices, ("data",))
    x0 = jax.random.normal(jax.random.PRNGKey(18), (8, 6))
    fn = lambda x: R.reconstruction_error(_toy, x, 7, jax.random.PRNGKey(19), schedule=SCHED, ddim_steps=3)  # noqa: E731
    xs = jax.device_put(x0, NamedSharding(mesh, P("data")))
    out = jax.jit(fn, out_shardings=NamedSharding(mesh, P("data")))(xs)
    assert len(out.sharding.device_set) == 4
    np.testing.assert_allclose(out, jax.jit(fn)(x0), rtol=1e-5, atol=1e-7)
