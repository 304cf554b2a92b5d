"""Gaussian diffusion math: forward noising, posterior, prediction conversions, losses.

Pure functions of arrays (no Flax). Notation follows DDPM (Ho et al. 2020) with the index
convention of :mod:`diffjax.diffusion.schedules`: ``alpha_bars[0] = 1`` is clean data, steps are
``t = 1..T``. Shapes: ``x0, xt, eps: [B, ...]`` (any trailing dims, e.g. ``[B, L, D]`` token
embeddings or ``[B, 720]`` DLSR features); ``t: int [B]`` or an int scalar (the same step for every
example); per-step coefficients are broadcast over the trailing dims.

A denoiser is a callable ``denoise_fn(x_t: [B, ...], t: int32 [B]) -> [B, ...]`` returning the
prediction named by ``prediction``: ``"x0"`` (x_0-parameterisation, papers.md 000 and 003),
``"eps"`` (DDPM noise prediction) or ``"v"`` (Salimans & Ho 2022,
``v = sqrt(abar) eps - sqrt(1 - abar) x0``). Model params are closed over.

Randomness is explicit: functions that sample take ``rng`` and split it internally. Reconstruction
(noise to t and denoise back, for OOD scores) lives in :mod:`diffjax.diffusion.reconstruction`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.schedules import GaussianSchedule

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
PREDICTIONS = ("x0", "eps", "v")
REDUCTIONS = ("mean", "sum", "sum_last_mean_tokens")


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS} (what denoise_fn returns); got {prediction!r}")


def coef_at(values: jax.Array, t, x: jax.Array) -> jax.Array:
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


def abar_at(schedule: GaussianSchedule, t, x: jax.Array):
    """``(abar_t, 1 - abar_t)``, each broadcastable against ``x``."""
    return coef_at(schedule.alpha_bars, t, x), coef_at(one_minus_alpha_bars(schedule), t, x)


def per_example_error(sq: jax.Array, mask, reduction: str) -> jax.Array:
    """Reduces a squared error ``sq: [B, ...]`` to ``[B]``, optionally masked; one of ``REDUCTIONS``.

    * ``"mean"``: mean over every non-batch element (``[B, L, D]``: over L *and* D);
    * ``"sum"``: sum over every non-batch element;
    * ``"sum_last_mean_tokens"``: sum over the last axis (the feature / embedding dim D), then mean
      over the remaining non-batch axes (the tokens): ``[B, L, D] -> mean_l sum_d sq[b, l, d]`` —
      paper 000's L_d, ``||f(x_t, t) - x_0||^2`` per token averaged over tokens (papers.md 000). For
      ``[B, D]`` it equals "sum".
    ``mask``: ``[B, ...]`` bool/float whose shape is a leading prefix of ``sq.shape`` (e.g. ``[B, L]``
    for ``[B, L, D]``): only masked-in elements count, and the means divide by the number of
    masked-in elements ("mean") or masked-in tokens ("sum_last_mean_tokens"; the mask must then not
    cover the last axis). An example with nothing masked in gives 0.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if reduction == "sum_last_mean_tokens":
        if sq.ndim < 2:
            raise ValueError(f"reduction='sum_last_mean_tokens' needs an error of shape [B, ..., D]; got {sq.shape}")
        if mask is not None and jnp.ndim(mask) >= sq.ndim:
            raise ValueError(f"reduction='sum_last_mean_tokens' takes a token mask over the leading dims of "
                             f"{sq.shape[:-1]} (not the last, summed axis); got mask shape {jnp.shape(mask)}")
        sq, reduction = jnp.sum(sq, axis=-1), "mean"
        if sq.ndim == 1:
            return sq if mask is None else sq * jnp.asarray(mask, sq.dtype)
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
    abar, omab = abar_at(schedule, t, x0)
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
    beta = coef_at(schedule.betas, t, xt)
    alpha = coef_at(schedule.alphas, t, xt)
    _, denom = abar_at(schedule, t, xt)
    abar_prev, omab_prev = abar_at(schedule, t - 1, xt)
    c0 = beta * jnp.sqrt(abar_prev) / denom
    ct = omab_prev * jnp.sqrt(alpha) / denom
    var = beta * omab_prev / denom
    return c0 * x0 + ct * xt, var


# ----------------------------------------------------------------------------------------------
# Conversions between eps / x0 / v (t >= 1 wherever 1 - abar_t is divided by).


def x0_from_eps(schedule: GaussianSchedule, xt: jax.Array, t, eps: jax.Array) -> jax.Array:
    """``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (inverse of DDPM eq. 4). Shapes ``[B, ...]``."""
    abar, omab = abar_at(schedule, t, xt)
    return (xt - jnp.sqrt(omab) * eps) / jnp.sqrt(abar)


def eps_from_x0(schedule: GaussianSchedule, xt: jax.Array, t, x0: jax.Array) -> jax.Array:
    """``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``; needs ``t >= 1``. Shapes ``[B, ...]``."""
    abar, omab = abar_at(schedule, t, xt)
    return (xt - jnp.sqrt(abar) * x0) / jnp.sqrt(omab)


def v_from_x0_eps(schedule: GaussianSchedule, x0: jax.Array, t, eps: jax.Array) -> jax.Array:
    """``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022, sec. 4). Shapes ``[B, ...]``."""
    abar, omab = abar_at(schedule, t, x0)
    return jnp.sqrt(abar) * eps - jnp.sqrt(omab) * x0


def x0_from_v(schedule: GaussianSchedule, xt: jax.Array, t, v: jax.Array) -> jax.Array:
    """``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`` (Salimans & Ho 2022). Shapes ``[B, ...]``."""
    abar, omab = abar_at(schedule, t, xt)
    return jnp.sqrt(abar) * xt - jnp.sqrt(omab) * v


def eps_from_v(schedule: GaussianSchedule, xt: jax.Array, t, v: jax.Array) -> jax.Array:
    """``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v`` (Salimans & Ho 2022). Shapes ``[B, ...]``."""
    abar, omab = abar_at(schedule, t, xt)
    return jnp.sqrt(omab) * xt + jnp.sqrt(abar) * v


def x0_eps_from_prediction(schedule: GaussianSchedule, xt: jax.Array, t, pred: jax.Array, prediction: str):
    """Turns a denoiser output into ``(x0_hat, eps_hat)``, each ``[B, ...]``; needs ``t >= 1``.

    ``prediction`` names what ``pred`` is: ``"x0"``, ``"eps"`` or ``"v"`` (see module docstring).
    """
    check_prediction(prediction)
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
    """x_0-prediction loss ``E_{t ~ U{1..T}, eps} ||f(x_t, t) - x_0||^2`` (papers.md 003 eq. L; 000 L_d).

    Paper 000's L_d (a squared norm over the embedding dim D, averaged over tokens) is
    ``reduction="sum_last_mean_tokens"`` with ``mask: [B, L]``; the default "mean" also averages over
    D (D times smaller: 1/1024 for RoBERTa-large).

    Args:
      denoise_fn: ``(x_t [B, ...], t int32 [B]) -> [B, ...]`` returning ``prediction``
        (converted to ``x0_hat`` if it is "eps" or "v").
      x0: ``[B, ...]`` clean data. rng: key (split into t and noise keys).
      mask: optional ``[B, ...]`` leading-dims mask (e.g. ``[B, L]`` non-padding tokens).
      t: optional fixed step (int scalar or ``[B]``) instead of ``U{1..T}``.
      reduction: per-example "mean" (default, mean over masked-in elements), "sum" or
        "sum_last_mean_tokens" (sum over the last axis, mean over masked-in tokens), see
        :func:`per_example_error`.
    Returns: ``(loss scalar, aux)``; ``aux = {"t": [B], "per_example": [B], "x0_hat": [B, ...],
      "x_t": [B, ...]}`` (``x0_hat`` lets a task add e.g. the rounding loss L_c of paper 000).
    """
    check_prediction(prediction)
    t, noise, xt = _noised_batch(schedule, x0, rng, t)
    pred = denoise_fn(xt, t)
    x0_hat = x0_eps_from_prediction(schedule, xt, t, pred, prediction)[0] if prediction != "x0" else pred
    per_example = per_example_error(jnp.square(x0_hat - x0), mask, reduction)
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
    check_prediction(prediction)
    t, noise, xt = _noised_batch(schedule, x0, rng, t)
    pred = denoise_fn(xt, t)
    eps_hat = x0_eps_from_prediction(schedule, xt, t, pred, prediction)[1] if prediction != "eps" else pred
    per_example = per_example_error(jnp.square(eps_hat - noise), mask, reduction)
    return jnp.mean(per_example), {"t": t, "per_example": per_example, "eps_hat": eps_hat, "x_t": xt}
