"""Gaussian reverse-process samplers: DDPM ancestral and DDIM, each one ``jax.lax.scan``.

Index convention of :mod:`diffjax.diffusion.schedules` (``alpha_bars[0] = 1`` = clean data), so a
step to ``t_prev = 0`` lands exactly on the predicted ``x0_hat``. ``denoise_fn(x_t: [B, ...],
t: int32 [B]) -> [B, ...]`` returns an ``"x0"``, ``"eps"`` or ``"v"`` prediction (``prediction``
argument). Every function is jittable end to end (close over ``denoise_fn`` / static ints).

Equations:
* DDPM ancestral (Ho et al. 2020, Alg. 2): ``x_{t-1} = mu~_t(x0_hat, x_t) + sigma_t z`` with the
  posterior mean of DDPM eq. 7 and ``sigma_t^2 = beta~_t`` (``variance="posterior"``) or ``beta_t``
  (``"beta"``); no noise on the last step (t = 1).
* DDIM (Song et al. 2021, eq. 12): ``x_{t'} = sqrt(abar_{t'}) x0_hat + sqrt(1 - abar_{t'} - sigma^2) eps_hat
  + sigma z`` with ``sigma = eta * sqrt((1 - abar_{t'}) / (1 - abar_t)) * sqrt(1 - abar_t / abar_{t'})``
  (eq. 16); eta = 0 deterministic, eta = 1 matches DDPM's posterior variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.gaussian import (
    DenoiseFn,
    abar_at,
    check_prediction,
    coef_at,
    log_alpha_bars,
    eps_from_x0,
    posterior_mean_variance,
    x0_eps_from_prediction,
)
from diffjax.diffusion.schedules import GaussianSchedule


def _predict(denoise_fn, schedule, x, t, prediction, clip_x0):
    """``(x0_hat, eps_hat)`` from the denoiser at ``t: int32 [B]`` (t >= 1), x0 optionally clipped."""
    x0_hat, eps_hat = x0_eps_from_prediction(schedule, x, t, denoise_fn(x, t), prediction)
    if clip_x0 is not None:
        x0_hat = jnp.clip(x0_hat, -clip_x0, clip_x0)
        eps_hat = eps_from_x0(schedule, x, t, x0_hat)
    return x0_hat, eps_hat


def ddim_step(
    denoise_fn: DenoiseFn,
    schedule: GaussianSchedule,
    x: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    rng: jax.Array,
    *,
    eta: float,
    prediction: str,
    clip_x0: float | None = None,
) -> jax.Array:
    """One DDIM step ``x_t -> x_{t_prev}`` (Song et al. 2021, eqs. 12 and 16).

    Args:
      x: ``[B, ...]`` at step ``t: int32 [B]``; ``t_prev: int32 [B]`` with ``0 <= t_prev <= t``.
        Where ``t_prev == t`` (incl. t = 0) the step is the identity.
      rng: key for ``z`` (unused in effect when eta = 0).
    Returns: ``x_{t_prev}: [B, ...]``; equals ``x0_hat`` where ``t_prev == 0``.
    """
    t_eval = jnp.maximum(t, 1)  # the model is never asked about t = 0 (identity steps only)
    x0_hat, eps_hat = _predict(denoise_fn, schedule, x, t_eval, prediction, clip_x0)
    log_abar = log_alpha_bars(schedule)
    _, omab = abar_at(schedule, t_eval, x)
    abar_prev, omab_prev = abar_at(schedule, t_prev, x)
    # 1 - abar_t / abar_{t'} without cancellation.
    one_minus_ratio = -jnp.expm1(coef_at(log_abar, t_eval, x) - coef_at(log_abar, t_prev, x))
    sigma2 = jnp.clip(eta**2 * omab_prev / omab * one_minus_ratio, 0.0, None)
    z = jax.random.normal(rng, x.shape, x.dtype)
    x_prev = (
        jnp.sqrt(abar_prev) * x0_hat
        + jnp.sqrt(jnp.clip(omab_prev - sigma2, 0.0, None)) * eps_hat
        + jnp.sqrt(sigma2) * z
    )
    same = (t_prev == t).reshape(t.shape + (1,) * (x.ndim - 1))
    return jnp.where(same, x, x_prev)


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """Static DDIM timestep sequence ``[num_steps + 1]`` int32, from T down to 0, strictly decreasing.

    ``tau_k = round(k * T / num_steps)`` for k = num_steps..0 (uniform spacing over 0..T).
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be in 1..T={num_train_steps}; got {num_steps}")
    taus = np.round(np.linspace(0, num_train_steps, num_steps + 1)).astype(np.int32)[::-1]
    assert np.all(np.diff(taus) < 0), taus
    return taus


def _init_noise(rng, shape, x_T):
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {x_T.shape} but shape={shape}")
        return jnp.asarray(x_T, jnp.float32)
    return jax.random.normal(rng, shape, jnp.float32)


def ddim_sample(
    denoise_fn: DenoiseFn,
    schedule: GaussianSchedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    num_steps: int,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """DDIM sampler (Song et al. 2021, eq. 12) from ``x_T ~ N(0, I)`` to ``x_0``: one ``lax.scan``.

    Args:
      shape: ``(B, ...)`` of the samples. num_steps: number of DDIM steps (static, <= T), over the
        uniformly spaced sequence of :func:`ddim_timesteps`. eta: 0 = deterministic DDIM,
        1 = DDPM-like. clip_x0: clip ``x0_hat`` to ``[-c, c]`` each step (None = off).
      x_T: optional starting noise ``[B, ...]`` (default drawn from ``rng``).
    Returns: samples ``[B, ...]`` float32.
    """
    check_prediction(prediction)
    taus = ddim_timesteps(schedule.num_steps, num_steps)
    init_rng, loop_rng = jax.random.split(rng)
    x = _init_noise(init_rng, shape, x_T)
    b = shape[0]

    def body(x, inp):
        t, t_prev, key = inp
        tb = jnp.full((b,), t, jnp.int32)
        pb = jnp.full((b,), t_prev, jnp.int32)
        return ddim_step(denoise_fn, schedule, x, tb, pb, key, eta=eta, prediction=prediction, clip_x0=clip_x0), None

    xs = (jnp.asarray(taus[:-1]), jnp.asarray(taus[1:]), jax.random.split(loop_rng, num_steps))
    x, _ = jax.lax.scan(body, x, xs)
    return x


def ddpm_sample(
    denoise_fn: DenoiseFn,
    schedule: GaussianSchedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    prediction: str = "eps",
    variance: str = "posterior",
    clip_x0: float | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """DDPM ancestral sampler over all T steps (Ho et al. 2020, Alg. 2): one ``lax.scan``.

    ``x_{t-1} = mean(x0_hat, x_t, t) + sigma_t z`` with the DDPM eq. 7 posterior mean,
    ``sigma_t^2 = beta~_t`` (``variance="posterior"``) or ``beta_t`` (``"beta"``), ``z = 0`` at t = 1.
    Args as :func:`ddim_sample`. Returns samples ``[B, ...]`` float32.
    """
    check_prediction(prediction)
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta'; got {variance!r}")
    T = schedule.num_steps
    init_rng, loop_rng = jax.random.split(rng)
    x = _init_noise(init_rng, shape, x_T)
    b = shape[0]

    def body(x, inp):
        t, key = inp
        tb = jnp.full((b,), t, jnp.int32)
        x0_hat, _ = _predict(denoise_fn, schedule, x, tb, prediction, clip_x0)
        mean, var = posterior_mean_variance(schedule, x0_hat, x, tb)
        if variance == "beta":
            var = coef_at(schedule.betas, tb, x)
        var = jnp.where(t > 1, var, 0.0)
        return mean + jnp.sqrt(var) * jax.random.normal(key, x.shape, x.dtype), None

    xs = (jnp.arange(T, 0, -1, dtype=jnp.int32), jax.random.split(loop_rng, T))
    x, _ = jax.lax.scan(body, x, xs)
    return x


def ddim_denoise_from(
    denoise_fn: DenoiseFn,
    schedule: GaussianSchedule,
    x_t: jax.Array,
    t_start,
    num_steps: int,
    rng: jax.Array,
    *,
    eta: float = 1.0,
    prediction: str = "x0",
    clip_x0: float | None = None,
) -> jax.Array:
    """Denoises ``x_t`` from step ``t_start`` back to 0 in ``num_steps`` DDIM steps -> ``x0_hat``.

    Used by DLSR scoring (papers.md 003, step 3: t_s in [3, 10], about 3 DDIM steps, eta = 1).
    The per-example sequence is ``tau_k = floor(t_start * k / K)``, k = K..0 (K = num_steps), so it
    ends at 0 and works for a traced ``t_start`` (vmap over timesteps). When ``t_start < K`` some
    consecutive taus coincide; those steps are the identity (no extra model effect).

    Args:
      x_t: ``[B, ...]`` noised at ``t_start`` (int scalar or ``[B]``, in 0..T; 0 returns x_t).
      num_steps: K, static Python int >= 1. rng: split into one key per step.
    Returns: ``x0_hat: [B, ...]``.
    """
    check_prediction(prediction)
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a static Python int >= 1; got {num_steps!r}")
    b = x_t.shape[0]
    t_start = jnp.broadcast_to(jnp.asarray(t_start, jnp.int32), (b,))
    ks = jnp.arange(num_steps, -1, -1, dtype=jnp.int32)
    timesteps = (t_start[None, :] * ks[:, None]) // num_steps  # [K + 1, B], from t_start down to 0
    return ddim_denoise_along(
        denoise_fn, schedule, x_t, timesteps, rng, eta=eta, prediction=prediction, clip_x0=clip_x0
    )


def ddim_denoise_along(
    denoise_fn: DenoiseFn,
    schedule: GaussianSchedule,
    x_t: jax.Array,
    timesteps,
    rng: jax.Array,
    *,
    eta: float = 1.0,
    prediction: str = "x0",
    clip_x0: float | None = None,
) -> jax.Array:
    """DDIM chain along an explicit timestep sequence: ``x_{tau_0} -> x_{tau_1} -> ... -> x_{tau_K}``.

    For reproducing a reference sequence exactly (e.g. DLSR's subset of a uniform DDIM grid).
    Each step is :func:`ddim_step` (Song et al. 2021, eq. 12); a step with equal consecutive taus
    is the identity; ending at tau_K = 0 returns ``x0_hat`` of the last step.

    Args:
      x_t: ``[B, ...]`` noised at ``timesteps[0]``.
      timesteps: int ``[K + 1]`` (same for all examples) or ``[K + 1, B]``, non-increasing,
        values in 0..T; may be traced (K is static from the shape).
      rng: split into one key per step.
    Returns: ``x_{tau_K}: [B, ...]``.
    """
    check_prediction(prediction)
    b = x_t.shape[0]
    timesteps = jnp.asarray(timesteps, jnp.int32)
    if timesteps.ndim == 1:
        timesteps = jnp.broadcast_to(timesteps[:, None], (timesteps.shape[0], b))
    if timesteps.ndim != 2 or timesteps.shape[1] != b or timesteps.shape[0] < 2:
        raise ValueError(f"timesteps must be [K + 1] or [K + 1, B={b}] with K >= 1; got shape {timesteps.shape}")
    num_steps = timesteps.shape[0] - 1

    def body(x, inp):
        t, t_prev, key = inp
        return ddim_step(denoise_fn, schedule, x, t, t_prev, key, eta=eta, prediction=prediction, clip_x0=clip_x0), None

    x, _ = jax.lax.scan(body, x_t, (timesteps[:-1], timesteps[1:], jax.random.split(rng, num_steps)))
    return x
