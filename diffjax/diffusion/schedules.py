"""Noise schedules: discrete Gaussian beta schedules and continuous-time masking schedules.

Gaussian (DDPM, Ho et al. 2020; papers.md 000 and 003)
------------------------------------------------------
A :class:`GaussianSchedule` holds ``betas``, ``alphas = 1 - betas`` and
``alpha_bars = cumprod(alphas)``, each of shape ``[T + 1]`` and indexed by the step ``t``:

* index ``0`` is the clean data: ``beta_0 = 0``, ``alpha_0 = 1``, ``alpha_bar_0 = 1``;
* index ``t = 1..T`` is diffusion step ``t``: ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)``.

With this convention every formula in :mod:`diffjax.diffusion.gaussian` that needs
``alpha_bar_{t-1}`` (posterior, DDIM) is plain indexing, and ``t - 1 = 0`` means "clean".
The schedule is a NamedTuple of arrays, hence a pytree: pass it through ``jit`` as an argument
or close over it (it is then a constant). ``num_steps`` (``T``) comes from the static shape.

Masking (continuous time, MD4 / MDLM; papers.md 002)
----------------------------------------------------
``alpha(t)``, ``t in [0, 1]``, is the probability that a token is still unmasked at time t:
``alpha(0) = 1`` (clean) and ``alpha(1) = 0`` (all masked). The continuous-time masked-diffusion
ELBO weights the cross-entropy at time t by ``-alpha'(t) / (1 - alpha(t))``
(:func:`masking_elbo_weight`); for the linear schedule that is ``1 / t``, the RDM weight of
papers.md 002 (lambda_t = 1/t).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

GAUSSIAN_KINDS = ("linear", "scaled_linear", "cosine", "sqrt")
MASKING_KINDS = ("linear", "cosine", "polynomial")


class GaussianSchedule(NamedTuple):
    """Discrete DDPM schedule; every field is ``[T + 1] float32``, index 0 = clean data.

    Attributes:
      betas: ``beta_t``; ``betas[0] = 0``.
      alphas: ``alpha_t = 1 - beta_t``; ``alphas[0] = 1``.
      alpha_bars: ``alpha_bar_t = prod_{s <= t} alpha_s``; ``alpha_bars[0] = 1``.
    """

    betas: jnp.ndarray
    alphas: jnp.ndarray
    alpha_bars: jnp.ndarray

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps (static: read from the array shape)."""
        return int(self.betas.shape[0]) - 1


def _betas_for_alpha_bar(num_steps: int, alpha_bar_fn, max_beta: float) -> np.ndarray:
    """``beta_t = min(1 - abar(t/T) / abar((t-1)/T), max_beta)`` for t = 1..T (Nichol & Dhariwal 2021, eq. 17)."""
    s = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    abar = alpha_bar_fn(s)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def schedule_from_betas(betas) -> GaussianSchedule:
    """Builds a :class:`GaussianSchedule` from ``betas: [T]`` for steps 1..T (index 0 is prepended).

    Computes ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s<=t} alpha_s`` in float64 and
    stores float32 arrays of shape ``[T + 1]``.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"betas must be a 1-D array of length T >= 1 (steps 1..T); got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError(
            f"every beta_t for t=1..T must lie in (0, 1); got min {betas.min()} max {betas.max()}. "
            "Check the schedule's start/end values."
        )
    betas = np.concatenate([[0.0], betas])
    alphas = 1.0 - betas
    alpha_bars = np.cumprod(alphas)
    return GaussianSchedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas=jnp.asarray(alphas, jnp.float32),
        alpha_bars=jnp.asarray(alpha_bars, jnp.float32),
    )


def gaussian_schedule(kind: str, num_steps: int, **kw) -> GaussianSchedule:
    """Discrete beta schedule with ``T = num_steps`` steps, arrays ``[T + 1]`` (index 0 = clean).

    Kinds (keyword overrides in brackets):

    * ``"linear"`` — ``beta_t = linspace(beta_start, beta_end, T)`` [``beta_start=1e-4``,
      ``beta_end=0.02``]: DDPM (Ho et al. 2020) and papers.md 000 ("beta linear 1e-4..0.02").
    * ``"scaled_linear"`` — ``beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)**2``
      [``beta_start=0.0015``, ``beta_end=0.0195``]: papers.md 003 (DLSR / latent diffusion).
    * ``"cosine"`` — ``alpha_bar(s) = cos(((s + offset) / (1 + offset)) * pi / 2)**2 / (same at 0)``,
      ``beta_t = min(1 - alpha_bar(t/T) / alpha_bar((t-1)/T), max_beta)`` [``offset=0.008``,
      ``max_beta=0.999``] (Nichol & Dhariwal 2021, eq. 17).
    * ``"sqrt"`` — ``alpha_bar(s) = 1 - sqrt(s + offset)`` and the same beta rule
      [``offset=1e-4``, ``max_beta=0.999``] (Diffusion-LM, Li et al. 2022, used by embedding
      diffusion LMs). As in Diffusion-LM's code, betas come from ratios of alpha_bar, so the
      resulting ``alpha_bars[t] = alpha_bar(t/T) / alpha_bar(0)`` (before clipping).

    ``alpha_bars`` is always recomputed as ``cumprod(1 - betas)`` after clipping.
    """
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive Python int (T); got {num_steps!r}")
    num_steps = int(num_steps)

    def take(defaults):
        unknown = set(kw) - set(defaults)
        if unknown:
            raise TypeError(
                f"gaussian_schedule(kind={kind!r}) got unknown options {sorted(unknown)}; "
                f"it accepts {sorted(defaults)}"
            )
        return {**defaults, **kw}

    if kind == "linear":
        o = take({"beta_start": 1e-4, "beta_end": 0.02})
        betas = np.linspace(o["beta_start"], o["beta_end"], num_steps, dtype=np.float64)
    elif kind == "scaled_linear":
        o = take({"beta_start": 0.0015, "beta_end": 0.0195})
        betas = np.linspace(math.sqrt(o["beta_start"]), math.sqrt(o["beta_end"]), num_steps, dtype=np.float64) ** 2
    elif kind == "cosine":
        o = take({"offset": 0.008, "max_beta": 0.999})
        off = o["offset"]

        def abar(s):
            return np.cos((s + off) / (1.0 + off) * np.pi / 2) ** 2

        betas = _betas_for_alpha_bar(num_steps, abar, o["max_beta"])
    elif kind == "sqrt":
        o = take({"offset": 1e-4, "max_beta": 0.999})
        off = o["offset"]
        betas = _betas_for_alpha_bar(num_steps, lambda s: 1.0 - np.sqrt(s + off), o["max_beta"])
    else:
        raise ValueError(f"unknown Gaussian schedule kind {kind!r}; expected one of {GAUSSIAN_KINDS}")
    return schedule_from_betas(betas)


def log_snr(schedule: GaussianSchedule, signal_var: float = 1.0) -> np.ndarray:
    """``log SNR_t = log(signal_var * abar_t / (1 - abar_t))`` for t = 1..T -> ``[T]`` float64
    (decreasing in t; ``signal_var``: the per-dimension variance of x_0)."""
    abar = np.asarray(schedule.alpha_bars, np.float64)[1:]
    return np.log(signal_var) + np.log(abar) - np.log1p(-abar)


def log_snr_timesteps(schedule: GaussianSchedule, num: int, t_min: int = 1, t_max: int | None = None) -> list[int]:
    """About ``num`` timesteps in ``[t_min, t_max]`` evenly spaced in log SNR (both ends kept).

    Each target log SNR is mapped to the nearest integer step and duplicates are dropped, so fewer
    than ``num`` steps come back where the schedule is coarse (near t_min). -> sorted list of ints.
    """
    T = schedule.num_steps
    t_max = T if t_max is None else int(t_max)
    if not 1 <= int(t_min) <= t_max <= T or num < 1:
        raise ValueError(f"log_snr_timesteps: need 1 <= t_min <= t_max <= T={T} and num >= 1; "
                         f"got t_min={t_min}, t_max={t_max}, num={num}")
    ls = log_snr(schedule)
    targets = np.linspace(ls[int(t_min) - 1], ls[t_max - 1], int(num))
    ts = {int(np.argmin(np.abs(ls - x))) + 1 for x in targets}
    return sorted(ts | {int(t_min), t_max})


# ----------------------------------------------------------------------------------------------
# Continuous-time masking schedules.


def _masking_options(kind: str, kw: dict) -> dict:
    defaults = {"polynomial": {"power": 1.0}}.get(kind, {})
    if kind not in MASKING_KINDS:
        raise ValueError(f"unknown masking schedule kind {kind!r}; expected one of {MASKING_KINDS}")
    unknown = set(kw) - set(defaults)
    if unknown:
        raise TypeError(
            f"masking schedule {kind!r} got unknown options {sorted(unknown)}; it accepts {sorted(defaults) or 'none'}"
        )
    return {**defaults, **kw}


def masking_alpha(t, kind: str = "linear", **kw):
    """``alpha(t)`` = P(token still unmasked at time t); ``t: [...] float in [0, 1]`` -> ``[...] float32``.

    * ``"linear"``: ``alpha(t) = 1 - t`` (papers.md 002: alpha_t = 1 - t/T in continuous time).
    * ``"cosine"``: ``alpha(t) = 1 - cos(pi/2 * (1 - t))`` (MD4, Shi et al. 2024).
    * ``"polynomial"``: ``alpha(t) = 1 - t**power`` [``power=1.0``] (MD4 "poly").
    """
    o = _masking_options(kind, kw)
    t = jnp.asarray(t, jnp.float32)
    if kind == "linear":
        return 1.0 - t
    if kind == "cosine":
        return 1.0 - jnp.cos(0.5 * jnp.pi * (1.0 - t))
    return 1.0 - t ** o["power"]


def masking_alpha_derivative(t, kind: str = "linear", **kw):
    """``d alpha / dt`` at ``t: [...] float`` -> ``[...] float32`` (always <= 0).

    * ``"linear"``: ``-1``.
    * ``"cosine"``: ``-(pi/2) sin(pi/2 * (1 - t))``.
    * ``"polynomial"``: ``-power * t**(power - 1)``.
    """
    o = _masking_options(kind, kw)
    t = jnp.asarray(t, jnp.float32)
    if kind == "linear":
        return -jnp.ones_like(t)
    if kind == "cosine":
        return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * (1.0 - t))
    p = o["power"]
    return -p * t ** (p - 1.0)


def masking_elbo_weight(t, kind: str = "linear", **kw):
    """Continuous-time masked-diffusion ELBO weight ``-alpha'(t) / (1 - alpha(t))``; ``t: [...]`` -> ``[...]``.

    The negative ELBO is ``E_t[ w(t) * sum_{masked n} -log p(x_0^n | x_t) ]`` (MD4 eq. 5, MDLM);
    for the linear schedule ``w(t) = 1/t`` (papers.md 002, lambda_t = 1/t). Diverges at t -> 0;
    callers sample t away from 0 (e.g. ``t ~ U(eps, 1)``).
    """
    a = masking_alpha(t, kind, **kw)
    da = masking_alpha_derivative(t, kind, **kw)
    return -da / (1.0 - a)
