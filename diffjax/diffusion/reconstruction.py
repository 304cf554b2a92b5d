"""Reconstruction: noise clean data to step t and denoise it back (OOD scores, papers.md 000 and 003).

Neither a loss nor a sampler, so it sits above both: it imports :mod:`diffjax.diffusion.gaussian`
(forward process, prediction conversions, error reductions) and
:mod:`diffjax.diffusion.gaussian_sampling` (the DDIM chain). ``denoise_fn(x_t [B, ...], t int32 [B])
-> [B, ...]`` returns the prediction named by ``prediction`` ("x0", "eps" or "v"); see
:mod:`diffjax.diffusion.gaussian`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.gaussian import (
    DenoiseFn,
    check_prediction,
    per_example_error,
    q_sample,
    x0_eps_from_prediction,
)
from diffjax.diffusion.gaussian_sampling import ddim_denoise_from
from diffjax.diffusion.schedules import GaussianSchedule


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
    check_prediction(prediction)
    noise_rng, chain_rng = jax.random.split(rng)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x0.shape[0],))
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    xt = q_sample(schedule, x0, t, noise)
    if ddim_steps == 0:
        pred = denoise_fn(xt, t)
        return pred if prediction == "x0" else x0_eps_from_prediction(schedule, xt, t, pred, prediction)[0]
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
    ``ddim_steps``-step DDIM chain). ``reduction`` (see :func:`diffjax.diffusion.gaussian.per_example_error`):
      * ``"sum_last_mean_tokens"``: sum over the embedding dim, mean over tokens (``mask: [B, L]`` for
        padding) — papers.md 000 L_d for ``x0: [B, L, D]``;
      * ``"sum"``: sum over all non-batch elements — papers.md 003 MSE score ``sum_i (z_0,i - z^_0,i)^2``;
      * ``"mean"`` (default): mean over all non-batch elements (L_d / D for ``[B, L, D]``).
    Higher = worse reconstruction = more OOD.

    Sweep timesteps with ``jax.vmap(lambda t: reconstruction_error(f, x0, t, rng, schedule=s))(ts)``
    -> ``[n_t, B]`` (same noise draw for every t when ``rng`` is shared).
    """
    x0_hat = reconstruct(
        denoise_fn, x0, t, rng, schedule=schedule, prediction=prediction, ddim_steps=ddim_steps, eta=eta
    )
    return per_example_error(jnp.square(x0 - x0_hat), mask, reduction)
