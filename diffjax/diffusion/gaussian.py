"""Gaussian diffusion math: forward noising, posterior, prediction conversions, losses, reconstruction.

Pure functions of arrays (no Flax). Notation follows DDPM (Ho et al. 2020) with the index
convention of :mod:`diffjax.diffusion.schedules`: ``alpha_bars[0] = 1`` is clean data, steps are
``t = 1..T``. Shapes: ``x0, xt, eps: [B, ...]`` (any trailing dims, e.g. ``[B, L, D]`` token
embeddings or ``[B, 720]`` DLSR features); ``t: int [B]`` or an int scalar (the same step for every
example); per-step coefficients are broadcast over the trailing dims.

A denoiser is a callable ``denoise_fn(x_t: [B, ...], t: int32 [B]) -> [B, ...]`` returning the
prediction named by ``prediction``: ``"x0"`` (x_0-parameterisation, papers.md 000 and 003),
``"eps"`` (DDPM noise prediction) or ``"v"`` (Salimans & Ho 2022,
``v = sqrt(abar) eps - sqrt(1 - abar) x0``). Model params are closed over.

Randomness is explicit: functions that sample take ``rng`` and split it internally.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.schedules import GaussianSchedule

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
PREDICTIONS = ("x0", "eps", "v")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS} (what denoise_fn returns); got {prediction!r}")


def _coef(values: jax.Array, t, x: jax.Array) -> jax.Array:
    """``values[t]`` reshaped to broadcast against ``x: [B, ...]``; ``t`` int scalar or ``[B]``."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"t must be an integer step index in 0..T (scalar or [B]); got dtype {t.dtype}")
    if t.ndim > 1:
        raise ValueError(f"t must be a scalar or [B]; got shape {t.shape}")
    if t.ndim == 1 and (x.ndim == 0 or t.shape[0] != x.shape[0]):
        raise ValueError(f"t has shape {t.shape} but x has shape {x.shape}; t must be [B] with B = x.shape[0] or a scalar")
    c = values[t]
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def one_minus_alpha_bars(schedule: GaussianSchedule) -> jax.Array:
    """``1 - abar_t`` for t = 0..T, ``[T + 1]``, computed as ``-expm1(sum_{s<=t} log1p(-beta_s))``.

    Accurate in float32 for small t, where ``1 - alpha_bars[t]`` loses digits to cancellation
    (linear schedule: abar_1 = 1 - 1e-4 is off by ~2e-4 relative). Used by every formula here.
    """
    return -jnp.expm1(log_alpha_bars(schedule))


def log_alpha_bars(schedule: GaussianSchedule) -> jax.Array:
    """``log abar_t = sum_{s<=t} log1p(-beta_s)`` for t = 0..T, ``[T + 1]`` (``log abar_0 = 0``)."""
    return jnp.cumsum(jnp.log1p(-schedule.betas))


def _abar(schedule: GaussianSchedule, t, x: jax.Array):
    """``(abar_t, 1 - abar_t)``, each broadcastable against ``x``."""
    return _coef(schedule.alpha_bars, t, x), _coef(one_minus_alpha_bars(schedule), t, x)


def _per_example(sq: jax.Array, mask, reduction: str) -> jax.Array:
    """Reduces ``sq: [B, ...]`` to ``[B]`` by mean or sum over non-batch dims, optionally masked.

    ``mask``: ``[B, ...]`` bool/float broadcastable on the leading dims of ``sq`` (e.g. ``[B, L]`` for
    ``[B, L, D]``): only masked-in elements count; "mean" divides by the number of masked-in elements.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    axes = tuple(range(1, sq.ndim))
    if mask is None:
        return jnp.mean(sq, axis=axes) if reduction == "mean" else jnp.sum(sq, axis=axes)
    mask = jnp.asarray(mask, sq.dtype)
    if mask.shape != sq.shape[: mask.ndim]:
        raise ValueError(f"mask shape {mask.shape} must be a leading prefix of the error shape {sq.shape}")
    mask = mask.reshape(mask.shape + (1,) * (sq.ndim - mask.ndim))
    total = jnp.sum(sq * mask, axis=axes)
    if reduction == "sum":
        return total
    count = jnp.sum(jnp.broadcast_to(mask, sq.shape), axis=axes)
    return total / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------------------------------
# Forward process and posterior.


def q_sample(schedule: GaussianSchedule, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
    """Samples ``x_t ~ q(x_t | x_0)``: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4; papers.md 000).

    Args:
      x0: ``[B, ...]`` clean data. t: int ``[B]`` or scalar in ``0..T``. noise: ``eps``, same shape as x0.
    Returns: ``x_t: [B, ...]``.
    """
    abar, omab = _abar(schedule, t, x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(omab) * noise


def posterior_mean_variance(schedule: GaussianSchedule, x0: jax.Array, xt: jax.Array, t):
    """Mean and variance of ``q(x_{t-1} | x_t, x_0)`` (DDPM eqs. 6-7), for ``t >= 1``.

    ``mean = beta_t sqrt(abar_{t-1}) / (1 - abar_t) * x0 + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) * x_t``,
    ``var = beta_t (1 - abar_{t-1}) / (1 - abar_t)``. At ``t = 1``: mean = x0, var = 0.

    Args:
      x0, xt: ``[B, ...]``. t: int ``[B]`` or scalar in ``1..T``.
    Returns: ``(mean [B, ...], variance)`` with variance shaped ``[B, 1, ...]`` (or ``[1, ...]``
      for scalar t), broadcastable against x.
    """
    t = jnp.asarray(t)
    beta = _coef(schedule.betas, t, xt)
    alpha = _coef(schedule.alphas, t, xt)
    _, denom = _abar(schedule, t, xt)
    abar_prev, omab_prev = _abar(schedule, t - 1, xt)
    c0 = beta * jnp.sqrt(abar_prev) / denom
    ct = omab_prev * jnp.sqrt(alpha) / denom
    var = beta * omab_prev / denom
    return c0 * x0 + ct * xt, var


# ----------------------------------------------------------------------------------------------
# Conversions between eps / x0 / v (t >= 1 wherever 1 - abar_t is divided by).


def x0_from_eps(schedule: GaussianSchedule, xt: jax.Array, t, eps: jax.Array) -> jax.Array:
    """``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (inverse of DDPM eq. 4). Shapes ``[B, ...]``."""
    abar, omab = _abar(schedule, t, xt)
    return (xt - jnp.sqrt(omab) * eps) / jnp.sqrt(abar)


def eps_from_x0(schedule: GaussianSchedule, xt: jax.Array, t, x0: jax.Array) -> jax.Array:
    """``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``; needs ``t >= 1``. Shapes ``[B, ...]``."""
    abar, omab = _abar(schedule, t, xt)
    return (xt - jnp.sqrt(abar) * x0) / jnp.sqrt(omab)


def v_from_x0_eps(schedule: GaussianSchedule, x0: jax.Array, t, eps: jax.Array) -> jax.Array:
    """``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022, sec. 4). Shapes ``[B, ...]``."""
    abar, omab = _abar(schedule, t, x0)
    return jnp.sqrt(abar) * eps - jnp.sqrt(omab) * x0


def x0_from_v(schedule: GaussianSchedule, xt: jax.Array, t, v: jax.Array) -> jax.Array:
    """``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`` (Salimans & Ho 2022). Shapes ``[B, ...]``."""
    abar, omab = _abar(schedule, t, xt)
    return jnp.sqrt(abar) * xt - jnp.sqrt(omab) * v


def eps_from_v(schedule: GaussianSchedule, xt: jax.Array, t, v: jax.Array) -> jax.Array:
    """``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v`` (Salimans & Ho 2022). Shapes ``[B, ...]``."""
    abar, omab = _abar(schedule, t, xt)
    return jnp.sqrt(omab) * xt + jnp.sqrt(abar) * v


def x0_eps_from_prediction(schedule: GaussianSchedule, xt: jax.Array, t, pred: jax.Array, prediction: str):
    """Turns a denoiser output into ``(x0_hat, eps_hat)``, each ``[B, ...]``; needs ``t >= 1``.

    ``prediction`` names what ``pred`` is: ``"x0"``, ``"eps"`` or ``"v"`` (see module docstring).
    """
    _check_prediction(prediction)
    if prediction == "x0":
        return pred, eps_from_x0(schedule, xt, t, pred)
    if prediction == "eps":
        return x0_from_eps(schedule, xt, t, pred), pred
    return x0_from_v(schedule, xt, t, pred), eps_from_v(schedule, xt, t, pred)


# ----------------------------------------------------------------------------------------------
# Training losses.


def _noised_batch(schedule: GaussianSchedule, x0: jax.Array, rng: jax.Array, t):
    t_rng, n_rng = jax.random.split(rng)
    if t is None:
        t = jax.random.randint(t_rng, (x0.shape[0],), 1, schedule.num_steps + 1, dtype=jnp.int32)
    else:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x0.shape[0],))
    noise = jax.random.normal(n_rng, x0.shape, x0.dtype)
    return t, noise, q_sample(schedule, x0, t, noise)


def x0_loss(
    denoise_fn: DenoiseFn,
    x0: jax.Array,
    rng: jax.Array,
    *,
    schedule: GaussianSchedule,
    prediction: str = "x0",
    mask=None,
    t=None,
    reduction: str = "mean",
):
    """x_0-prediction loss ``E_{t ~ U{1..T}, eps} ||f(x_t, t) - x_0||^2`` (papers.md 000 L_d; 003 eq. L).

    Args:
      denoise_fn: ``(x_t [B, ...], t int32 [B]) -> [B, ...]`` returning ``prediction``
        (converted to ``x0_hat`` if it is "eps" or "v").
      x0: ``[B, ...]`` clean data. rng: key (split into t and noise keys).
      mask: optional ``[B, ...]`` leading-dims mask (e.g. ``[B, L]`` non-padding tokens).
      t: optional fixed step (int scalar or ``[B]``) instead of ``U{1..T}``.
      reduction: per-example "mean" (default, mean over masked-in elements) or "sum".
    Returns: ``(loss scalar, aux)``; ``aux = {"t": [B], "per_example": [B], "x0_hat": [B, ...],
      "x_t": [B, ...]}`` (``x0_hat`` lets a task add e.g. the rounding loss L_c of paper 000).
    """
    _check_prediction(prediction)
    t, noise, xt = _noised_batch(schedule, x0, rng, t)
    pred = denoise_fn(xt, t)
    x0_hat = x0_eps_from_prediction(schedule, xt, t, pred, prediction)[0] if prediction != "x0" else pred
    per_example = _per_example(jnp.square(x0_hat - x0), mask, reduction)
    return jnp.mean(per_example), {"t": t, "per_example": per_example, "x0_hat": x0_hat, "x_t": xt}


def eps_loss(
    denoise_fn: DenoiseFn,
    x0: jax.Array,
    rng: jax.Array,
    *,
    schedule: GaussianSchedule,
    prediction: str = "eps",
    mask=None,
    t=None,
    reduction: str = "mean",
):
    """DDPM "simple" loss ``E_{t ~ U{1..T}, eps} ||eps - eps_hat(x_t, t)||^2`` (DDPM eq. 14).

    Same arguments and aux as :func:`x0_loss` (aux has ``"eps_hat"`` instead of ``"x0_hat"``);
    ``prediction`` "x0" or "v" outputs are converted to ``eps_hat`` first (needs t >= 1).
    """
    _check_prediction(prediction)
    t, noise, xt = _noised_batch(schedule, x0, rng, t)
    pred = denoise_fn(xt, t)
    eps_hat = x0_eps_from_prediction(schedule, xt, t, pred, prediction)[1] if prediction != "eps" else pred
    per_example = _per_example(jnp.square(eps_hat - noise), mask, reduction)
    return jnp.mean(per_example), {"t": t, "per_example": per_example, "eps_hat": eps_hat, "x_t": xt}


# ----------------------------------------------------------------------------------------------
# Reconstruction error (OOD scoring, papers.md 000 and 003).


def reconstruct(
    denoise_fn: DenoiseFn,
    x0: jax.Array,
    t,
    rng: jax.Array,
    *,
    schedule: GaussianSchedule,
    prediction: str = "x0",
    ddim_steps: int = 0,
    eta: float = 1.0,
) -> jax.Array:
    """Noises ``x0`` to step ``t`` and denoises it back: returns ``x0_hat: [B, ...]``.

    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (one fresh eps per example from ``rng``), then
      * ``ddim_steps == 0``: one-step prediction ``x0_hat = f(x_t, t)`` (papers.md 000 proposal);
      * ``ddim_steps = K > 0``: a K-step DDIM chain from t to 0 with ``eta`` (papers.md 003, step 3:
        K about 3, eta = 1), via :func:`diffjax.diffusion.gaussian_sampling.ddim_denoise_from`.
    ``t`` (int scalar or ``[B]``, ``1..T``) may be traced, so ``jax.vmap`` over t works.
    """
    _check_prediction(prediction)
    noise_rng, chain_rng = jax.random.split(rng)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x0.shape[0],))
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    xt = q_sample(schedule, x0, t, noise)
    if ddim_steps == 0:
        pred = denoise_fn(xt, t)
        return pred if prediction == "x0" else x0_eps_from_prediction(schedule, xt, t, pred, prediction)[0]
    from diffjax.diffusion.gaussian_sampling import ddim_denoise_from  # lazy: sampling imports this module

    return ddim_denoise_from(denoise_fn, schedule, xt, t, ddim_steps, chain_rng, eta=eta, prediction=prediction)


def reconstruction_error(
    denoise_fn: DenoiseFn,
    x0: jax.Array,
    t,
    rng: jax.Array,
    *,
    schedule: GaussianSchedule,
    prediction: str = "x0",
    ddim_steps: int = 0,
    eta: float = 1.0,
    reduction: str = "mean",
    mask=None,
) -> jax.Array:
    """Per-example reconstruction error ``||x0 - x0_hat||^2`` at step t -> ``[B]`` float32.

    ``x0_hat`` comes from :func:`reconstruct` (noise to t, then one-step prediction or a
    ``ddim_steps``-step DDIM chain). ``reduction="mean"`` averages over non-batch elements
    (papers.md 000 L_d: mean over tokens, with ``mask: [B, L]`` for padding); ``"sum"`` sums them
    (papers.md 003 MSE score ``sum_i (z_0,i - z^_0,i)^2``). Higher = worse reconstruction = more OOD.

    Sweep timesteps with ``jax.vmap(lambda t: reconstruction_error(f, x0, t, rng, schedule=s))(ts)``
    -> ``[n_t, B]`` (same noise draw for every t when ``rng`` is shared).
    """
    x0_hat = reconstruct(
        denoise_fn, x0, t, rng, schedule=schedule, prediction=prediction, ddim_steps=ddim_steps, eta=eta
    )
    return _per_example(jnp.square(x0 - x0_hat), mask, reduction)
