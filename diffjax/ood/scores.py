"""DLSR reconstruction scores (papers.md, paper 003, "Inference (scoring)"). Higher = more OOD.

1. z_0: normalised features [N, D] (``diffjax.ood.features``).
2. z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps with a *fixed* noise seed
   (``reconstruct``; noise of example i depends only on (seed, i), not on batching).
3. z0_hat = DDIM(eta) from t back to 0 in ``ddim_steps`` steps (``gaussian.reconstruct`` ->
   ``ddim_denoise_from``); ``ddim_steps=0`` is the single x0 prediction f(z_t, t).
4. Scores, per layer l (slice of C_l channels) and fused:
   * ``mse``   : sum_i (z_0,i - z0_hat_i)^2;     per layer: the same sum over the slice
                 (fused = sum of the per-layer values).
   * ``mfsim`` : -(1/L) sum_l cos(z_0,l, z0_hat_l); per layer: -cos(z_0,l, z0_hat_l).
                 ``mfsim_skip_first=True`` averages over layers 2..L only, as the authors' code
                 (``cosine_similarity_per_block`` loops over ``zip(indices[:-1], indices[1:])``).
   * ``lr``    : S(early params) - S(final params) for each of the above with the *same* noise
                 (``likelihood_ratio``; the task takes the early params from a trainer snapshot).
                 Sign as the authors' code (xbyym/DLSR ``test_LR.py``), not papers.md's wording.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from diffjax.diffusion import reconstruction
from diffjax.ood.features import split_layers
from diffjax.runtime import example_keys  # noqa: F401 (scores.example_keys: the keys reconstruct takes)

SCORE_NAMES = ("mse", "mfsim")


def reconstruct(denoise_fn: Callable, schedule, z0: jax.Array, t, keys: jax.Array, *,
                ddim_steps: int = 3, eta: float = 1.0) -> jax.Array:
    """Noise ``z0 [N, D]`` to step ``t`` and denoise back -> z0_hat [N, D].

    ``t``: int scalar or per-example ``[N]`` (may be traced). ``denoise_fn(z_t [B, D], t [B] int32)
    -> z0_hat [B, D]`` (x0-parameterisation). ``keys: [N]`` per-example keys (``example_keys``):
    example i's forward noise and DDIM noise depend only on keys[i], so scores do not depend on how
    examples are batched (the per-example calls are vmapped, so the denoiser still runs as one
    batched matmul chain over all N rows).
    """
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), z0.shape[:1])

    def one(z, key, tt):
        return reconstruction.reconstruct(denoise_fn, z[None], tt, key, schedule=schedule, prediction="x0",
                                    ddim_steps=ddim_steps, eta=eta)[0]

    return jax.vmap(one)(z0, keys, t)


def mse_layers(z0: jax.Array, z0_hat: jax.Array, dims: Sequence[int]) -> jax.Array:
    """Per-layer squared error: [N, D] x2 -> [L, N]."""
    return jnp.stack([jnp.sum((a - b) ** 2, axis=-1)
                      for a, b in zip(split_layers(z0, dims), split_layers(z0_hat, dims))])


def neg_cos_layers(z0: jax.Array, z0_hat: jax.Array, dims: Sequence[int], eps: float = 1e-8) -> jax.Array:
    """Per-layer negative cosine similarity (torch's cosine_similarity eps): [N, D] x2 -> [L, N]."""
    out = []
    for a, b in zip(split_layers(z0, dims), split_layers(z0_hat, dims)):
        na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
        nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
        out.append(-jnp.sum(a * b, axis=-1) / (na * nb))
    return jnp.stack(out)


def scores_from_reconstruction(z0: jax.Array, z0_hat: jax.Array, dims: Sequence[int], *,
                               mfsim_skip_first: bool = False) -> dict[str, jax.Array]:
    """All scores of one reconstruction: {"mse": [N], "mse_layers": [L, N], "mfsim": [N], "mfsim_layers": [L, N]}."""
    mse_l = mse_layers(z0, z0_hat, dims)
    cos_l = neg_cos_layers(z0, z0_hat, dims)
    fused_cos = cos_l[1:] if (mfsim_skip_first and len(dims) > 1) else cos_l
    return {"mse": jnp.sum(mse_l, axis=0), "mse_layers": mse_l,
            "mfsim": jnp.mean(fused_cos, axis=0), "mfsim_layers": cos_l}


def reconstruction_scores(denoise_fn: Callable, schedule, z0: jax.Array, t, keys: jax.Array,
                          dims: Sequence[int], *, ddim_steps: int = 3, eta: float = 1.0,
                          mfsim_skip_first: bool = False) -> dict[str, jax.Array]:
    """``reconstruct`` then ``scores_from_reconstruction``: z0 [N, D] -> dict of [N] / [L, N] scores."""
    z0_hat = reconstruct(denoise_fn, schedule, z0, t, keys, ddim_steps=ddim_steps, eta=eta)
    return scores_from_reconstruction(z0, z0_hat, dims, mfsim_skip_first=mfsim_skip_first)


def make_reconstruction_score_fn(apply_fn: Callable, schedule, dims: Sequence[int], *, ddim_steps: int = 3,
                                 eta: float = 1.0, mfsim_skip_first: bool = False) -> Callable:
    """The DLSR scores as a sweep score function (``diffjax.ood.sweep.make_score_sweep``).

    ``apply_fn(params, z_t [B, D], t [B] int32) -> z0_hat [B, D]``. Returns
    ``score_fn(params, z0 [B, D], t [B] int32, keys [B]) -> {"mse": [B], "mse_layers": [L, B],
    "mfsim": [B], "mfsim_layers": [L, B]}`` (``reconstruction_scores`` with per-row t and keys).
    """
    dims = tuple(int(d) for d in dims)

    def score_fn(params, z0, t, keys):
        return reconstruction_scores(lambda x, tt: apply_fn(params, x, tt), schedule, z0, t, keys, dims,
                                     ddim_steps=ddim_steps, eta=eta, mfsim_skip_first=mfsim_skip_first)

    return score_fn


def likelihood_ratio(final: dict[str, jax.Array], early: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """LR scores ``S_early - S_final`` for every entry: ``{"lr_<name>": [...]}`` (same shapes).

    The authors' definition: xbyym/DLSR ``test_LR.py``, ``compute_metrics`` returns
    ``mse_first - mse_end`` per sample (``model_first`` = ``checkpoint-0.pth``, the end of epoch 0;
    ``model_end`` = the last checkpoint), where "mse" is whichever ``--similarity_type`` score the
    model returns (``ldm/util.py``: MSE = sum of squared errors, MFsim = minus the mean per-layer
    cosine; both "higher = more OOD"), and ``evaluate_ood_detection`` feeds it to
    ``roc_auc_score`` with OOD = 1, i.e. higher = more OOD. The same sign for every score.
    (papers.md's "S_end - S_first" is the opposite orientation; its AUROC is exactly
    1 - the AUROC of this one, ties counting 1/2.)

    The early snapshot must already be a reconstructor. Without EMA warm-up (``ema_warmup=False``,
    ema_decay 0.99-0.999) the trainer's step-100 EMA snapshot is mostly the initialisation, and
    the LFDN's output layer is zero-initialised, so the early model outputs almost 0 (mean
    |z0_hat|^2 = 4.5 vs |z_0|^2 = 507): S_early(MSE) ~ |z_0|^2 is the same for every input
    (per-sample z-scores) and LR-MSE ~ const - S_final(MSE) ranks inputs in *reverse* (DLSR
    MNIST demo, AUROC near-OOD / photo patches / sklearn digits: lr_mse 0.44 / 0.00 / 0.13).
    The authors' "first" model is checkpoint-0 after one epoch, with latent-diffusion's LitEma
    warm-up min(d, (1+n)/(10+n)); with the trainer's ``ema_warmup=True`` (the demo default) the
    demo gives lr_mse 0.65 / 0.99 / 0.99 and lr_mfsim 0.67 / 0.96 / 1.00. We keep the authors' sign
    rather than choosing a sign per score from OOD test labels.
    """
    return {f"lr_{k}": early[k] - final[k] for k in final}
