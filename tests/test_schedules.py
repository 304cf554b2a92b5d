"""Schedules against hand formulas; masking derivatives against finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.schedules import (
    GAUSSIAN_KINDS,
    MASKING_KINDS,
    GaussianSchedule,
    gaussian_schedule,
    masking_alpha,
    masking_alpha_derivative,
    masking_elbo_weight,
    schedule_from_betas,
)


def _hand_alpha_bars(betas):
    """Python-float loop: abar_t = prod_{s=1..t} (1 - beta_s), abar_0 = 1."""
    out, prod = [1.0], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return np.array(out)


def test_linear_matches_ddpm_formula():
    T = 1000
    s = gaussian_schedule("linear", T)
    betas = [1e-4 + (t - 1) * (0.02 - 1e-4) / (T - 1) for t in range(1, T + 1)]
    assert s.num_steps == T and s.betas.shape == (T + 1,)
    np.testing.assert_allclose(s.betas[1:], betas, rtol=1e-6)
    assert float(s.betas[0]) == 0.0 and float(s.alpha_bars[0]) == 1.0 and float(s.alphas[0]) == 1.0
    np.testing.assert_allclose(s.alpha_bars, _hand_alpha_bars(betas), rtol=2e-5, atol=1e-9)
    # Well-known value: DDPM linear T=1000 ends at abar_T ~ 4.04e-5.
    assert abs(float(s.alpha_bars[-1]) - 4.036e-5) < 2e-7


def test_scaled_linear_matches_dlsr_formula():
    T = 100
    s = gaussian_schedule("scaled_linear", T)
    lo, hi = math.sqrt(0.0015), math.sqrt(0.0195)
    betas = [(lo + (t - 1) * (hi - lo) / (T - 1)) ** 2 for t in range(1, T + 1)]
    np.testing.assert_allclose(s.betas[1:], betas, rtol=1e-6)
    np.testing.assert_allclose([s.betas[1], s.betas[T]], [0.0015, 0.0195], rtol=1e-6)
    np.testing.assert_allclose(s.alpha_bars, _hand_alpha_bars(betas), rtol=2e-5)


def test_cosine_matches_improved_ddpm_formula():
    T, off = 200, 0.008
    s = gaussian_schedule("cosine", T)
    f = lambda u: math.cos((u + off) / (1 + off) * math.pi / 2) ** 2  # noqa: E731
    want = np.array([f(t / T) / f(0.0) for t in range(T + 1)])
    betas = np.asarray(s.betas)
    unclipped = np.concatenate([[True], np.cumprod(betas[1:] < 0.999 - 1e-6).astype(bool)])
    assert unclipped[: T - 5].all()  # only the last steps may be clipped
    np.testing.assert_allclose(np.asarray(s.alpha_bars)[unclipped], want[unclipped], rtol=1e-4, atol=1e-7)
    assert betas.max() <= 0.999 + 1e-6


def test_sqrt_matches_diffusion_lm_formula():
    T, off = 500, 1e-4
    s = gaussian_schedule("sqrt", T)
    f = lambda u: 1 - math.sqrt(u + off)  # noqa: E731
    want = np.array([f(t / T) / f(0.0) for t in range(T + 1)])
    abar = np.asarray(s.alpha_bars)
    np.testing.assert_allclose(abar[: T - 1], want[: T - 1], rtol=2e-4, atol=1e-7)
    # Diffusion-LM's first beta: 1 - (1 - sqrt(1/T + 1e-4)) / (1 - sqrt(1e-4)).
    np.testing.assert_allclose(s.betas[1], 1 - f(1 / T) / f(0.0), rtol=1e-5)


@pytest.mark.parametrize("kind", GAUSSIAN_KINDS)
def test_schedule_invariants_and_jit(kind):
    s = gaussian_schedule(kind, 50)
    b, a, ab = map(np.asarray, s)
    assert np.all(b[1:] > 0) and np.all(b[1:] < 1)
    np.testing.assert_allclose(a, 1 - b, atol=1e-7)
    assert np.all(np.diff(ab) < 0) and ab[0] == 1.0
    # A schedule is a pytree; num_steps is static under jit.
    out = jax.jit(lambda sch: (sch.alpha_bars[sch.num_steps], sch.num_steps))(s)
    assert out[1] == 50 and float(out[0]) == float(ab[-1])


def test_schedule_errors_are_actionable():
    with pytest.raises(ValueError, match="expected one of"):
        gaussian_schedule("quadratic", 10)
    with pytest.raises(TypeError, match="accepts"):
        gaussian_schedule("linear", 10, offset=0.1)
    with pytest.raises(ValueError, match="positive"):
        gaussian_schedule("linear", 0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        schedule_from_betas([0.1, 1.5])
    assert isinstance(schedule_from_betas([0.1, 0.2]), GaussianSchedule)
    np.testing.assert_allclose(schedule_from_betas([0.1, 0.2]).alpha_bars, [1.0, 0.9, 0.72], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Masking schedules.

MASK_CASES = [("linear", {}), ("cosine", {}), ("polynomial", {"power": 1.0}), ("polynomial", {"power": 2.5})]


@pytest.mark.parametrize("kind,kw", MASK_CASES)
def test_masking_alpha_boundaries_and_monotone(kind, kw):
    t = jnp.linspace(0.0, 1.0, 101)
    a = np.asarray(masking_alpha(t, kind, **kw))
    np.testing.assert_allclose([a[0], a[-1]], [1.0, 0.0], atol=1e-6)
    assert np.all(np.diff(a) < 0)


@pytest.mark.parametrize("kind,kw", MASK_CASES)
def test_masking_derivative_matches_finite_differences(kind, kw):
    t = jnp.linspace(0.05, 0.95, 19)
    h = 1e-3
    fd = (masking_alpha(t + h, kind, **kw) - masking_alpha(t - h, kind, **kw)) / (2 * h)
    np.testing.assert_allclose(masking_alpha_derivative(t, kind, **kw), fd, atol=2e-3, rtol=2e-3)
    # and against autodiff, jitted
    ad = jax.jit(jax.vmap(jax.grad(lambda u: masking_alpha(u, kind, **kw))))(t)
    np.testing.assert_allclose(masking_alpha_derivative(t, kind, **kw), ad, rtol=1e-5, atol=1e-6)


def test_masking_hand_values_and_elbo_weight():
    t = jnp.array([0.25, 0.5, 0.8])
    np.testing.assert_allclose(masking_alpha(t, "cosine"), 1 - np.cos(np.pi / 2 * (1 - np.array([0.25, 0.5, 0.8]))), rtol=1e-6)
    np.testing.assert_allclose(masking_alpha(t, "polynomial", power=2.0), 1 - np.array([0.25, 0.5, 0.8]) ** 2, rtol=1e-6)
    # Linear schedule: ELBO weight = 1/t (papers.md 002, lambda_t = 1/t).
    np.testing.assert_allclose(masking_elbo_weight(t, "linear"), 1 / np.array([0.25, 0.5, 0.8]), rtol=1e-6)
    np.testing.assert_allclose(masking_elbo_weight(t, "polynomial", power=1.0), masking_elbo_weight(t, "linear"), rtol=1e-6)
    with pytest.raises(ValueError, match="expected one of"):
        masking_alpha(t, "geometric")
    with pytest.raises(TypeError):
        masking_alpha(t, "linear", power=2.0)


@pytest.mark.parametrize("kind", MASKING_KINDS)
def test_masking_elbo_weight_integrates_to_alpha(kind):
    """int_a^b w(t) dt = log(1 - alpha(b)) - log(1 - alpha(a)) (w = -alpha'/(1 - alpha))."""
    a, b = 0.2, 0.9
    t = jnp.linspace(a, b, 2001)
    w = np.asarray(masking_elbo_weight(t, kind), np.float64)
    integral = np.trapezoid(w, np.asarray(t, np.float64))
    want = math.log(1 - float(masking_alpha(b, kind))) - math.log(1 - float(masking_alpha(a, kind)))
    np.testing.assert_allclose(integral, want, rtol=1e-4)
