"""Absorbing-state ("[MASK]") discrete diffusion: corruption and training losses.

Papers (see ``shared/docs/papers.md``): 002 (RDM reparameterised loss) and the continuous-time
masked-diffusion ELBO of MD4 / MDLM.

Conventions shared by every function here:

* ``x0: [B, L] int32`` clean token ids; they must never equal ``mask_id``.
* ``corruptible: [B, L] bool`` — True where a token may be masked. False marks prompt / source
  positions (never corrupted, never in the loss) and padding. ``valid: [B, L] bool`` (optional) is
  AND-ed into ``corruptible`` so callers can pass padding separately; ``None`` means all True.
* ``logits_fn(x_t: [B, L] int32, t: [B] float32) -> [B, L, V]`` — the denoiser, parameters closed
  over. ``t`` is the *masking level*: the continuous time for the ELBO, ``t/T`` (= the mask
  probability) for the discrete-time RDM loss, ``r`` for its ratio variant.
* If ``0 <= mask_id < V`` the logit of ``mask_id`` is set to ``-inf`` before the softmax
  (``p(x0 = [MASK]) = 0``, as in MD4); if the mask id lies outside the model's vocabulary
  (``mask_id >= V``) nothing is changed.
* Randomness: one ``rng`` in, split inside, never reused.

Normalisation (``normalize=``), applied to the per-example weighted sum ``S_b``:

* ``"sequence"`` — ``mean_b S_b`` (nats per sequence; the ELBO itself for ``masked_diffusion_elbo``).
* ``"token"`` — ``mean_b S_b / n_b`` with ``n_b`` the number of corruptible positions of example
  ``b`` (the normalisation of paper 002's public trainer, ``yegcjs/DiffusionLLM``).
* ``"batch_token"`` — ``sum_b S_b / sum_b n_b`` (nats per corruptible token over the batch).
Examples with no corruptible position contribute 0 (``n_b`` is clamped to 1).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffjax.diffusion import schedules

# The one denoiser signature of discrete diffusion (losses here, ``uniform``, ``discrete_sampling``):
# ``logits_fn(x [B, L] int32, t [B] float32) -> logits [B, L, V]``, parameters closed over.
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]

NORMALIZATIONS = ("sequence", "token", "batch_token")
RDM_WEIGHTINGS = ("reciprocal", "linear", "constant")


# ----------------------------------------------------------------------------- helpers


def combine_masks(corruptible: Optional[jax.Array], valid: Optional[jax.Array], shape) -> jax.Array:
    """``corruptible & valid`` as ``[B, L] bool``; ``None`` stands for all-True."""
    out = jnp.ones(shape, bool)
    if corruptible is not None:
        out = out & jnp.asarray(corruptible, bool)
    if valid is not None:
        out = out & jnp.asarray(valid, bool)
    return out


def _check_tokens(x0: jax.Array, name: str = "x0") -> None:
    if x0.ndim != 2:
        raise ValueError(f"{name} must be [B, L] int token ids; got shape {x0.shape}. "
                         f"Flatten extra batch axes or vmap over them.")
    if not jnp.issubdtype(x0.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array of token ids; got dtype {x0.dtype}.")


def exclude_token_logit(logits: jax.Array, token_id: Optional[int]) -> jax.Array:
    """Sets ``logits[..., token_id] = -inf`` (``token_id`` None: logits unchanged).

    logits: [..., V] float. Used so that the denoiser never predicts ``[MASK]``. A ``token_id``
    outside ``[0, V)`` is an error (a [MASK] id the model cannot represent would reach its
    embedding gather, which clamps silently).
    """
    if token_id is None:
        return logits
    if not 0 <= int(token_id) < logits.shape[-1]:
        raise ValueError(f"mask_id={token_id} is outside the model's vocabulary [0, {logits.shape[-1]}) "
                         f"(logits have V = {logits.shape[-1]}); use the tokenizer's [MASK] id.")
    return logits.at[..., int(token_id)].set(-jnp.inf)


def token_log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """``log softmax(logits)[tokens]``: logits [B, L, V], tokens [B, L] int -> [B, L] float32.

    Computed as ``logits[tokens] - logsumexp(logits)``: the same value as indexing ``log_softmax``
    without materialising the [B, L, V] log-probabilities (one full pass less over the logits in the
    forward and in the backward; about 4% of RoBERTa-base's MLM head step on CPU).
    """
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def check_normalize(normalize: str) -> None:
    """Raises ``ValueError`` unless ``normalize`` is one of ``NORMALIZATIONS``."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZATIONS}.")


def normalize_loss(per_example: jax.Array, num_tokens: jax.Array, normalize: str) -> jax.Array:
    """Reduces per-example weighted sums ``S_b`` [B] to a scalar (see module docstring).

    num_tokens: [B] number of corruptible positions per example.
    """
    num_tokens = num_tokens.astype(jnp.float32)
    if normalize == "sequence":
        return jnp.mean(per_example)
    if normalize == "token":
        return jnp.mean(per_example / jnp.maximum(num_tokens, 1.0))
    if normalize == "batch_token":
        return jnp.sum(per_example) / jnp.maximum(jnp.sum(num_tokens), 1.0)
    raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZATIONS}.")


# ----------------------------------------------------------------------------- corruption


def absorbing_corrupt(
    x0: jax.Array,
    mask_prob: jax.Array,
    rng: jax.Array,
    *,
    mask_id: int,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """Absorbing forward process q(x_t | x_0), independent per token.

    q(x_t^n | x_0^n) = alpha_t 1[x_t^n = x_0^n] + (1 - alpha_t) 1[x_t^n = MASK]  (papers.md 002),
    with ``mask_prob = 1 - alpha_t``, applied only where ``corruptible & valid``.

    Args:
      x0: [B, L] int clean tokens.
      mask_prob: scalar or [B] float in [0, 1], the probability 1 - alpha_t of masking a token.
      rng: PRNG key.
      mask_id: id written into masked positions.
      corruptible, valid: [B, L] bool or None (module docstring).

    Returns:
      x_t: [B, L] (dtype of x0) with ``mask_id`` at masked positions;
      masked: [B, L] bool, True exactly where x_t was set to ``mask_id``.
    """
    _check_tokens(x0)
    can = combine_masks(corruptible, valid, x0.shape)
    p = jnp.asarray(mask_prob, jnp.float32)
    if p.ndim == 1:
        p = p[:, None]  # [B] -> [B, 1]
    u = jax.random.uniform(rng, x0.shape)
    masked = (u < p) & can
    x_t = jnp.where(masked, jnp.asarray(mask_id, x0.dtype), x0)
    return x_t, masked


def absorbing_corrupt_count(
    x0: jax.Array,
    num_masked: jax.Array,
    rng: jax.Array,
    *,
    mask_id: int,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """Masks exactly ``min(num_masked_b, n_b)`` corruptible positions per example, chosen uniformly.

    A uniformly random subset: positions are ranked by i.i.d. uniform keys (non-corruptible ones
    last) and the lowest ``num_masked_b`` ranks are masked.

    Args:
      x0: [B, L] int; num_masked: [B] int; rng: PRNG key; mask_id, corruptible, valid as above.

    Returns:
      (x_t [B, L], masked [B, L] bool) as in ``absorbing_corrupt``.
    """
    _check_tokens(x0)
    can = combine_masks(corruptible, valid, x0.shape)
    keys = jnp.where(can, jax.random.uniform(rng, x0.shape), 2.0)
    ranks = jnp.argsort(jnp.argsort(keys, axis=-1), axis=-1)
    masked = (ranks < jnp.asarray(num_masked)[:, None]) & can
    x_t = jnp.where(masked, jnp.asarray(mask_id, x0.dtype), x0)
    return x_t, masked


# ----------------------------------------------------------------------------- MD4 / MDLM ELBO


def sample_times(rng: jax.Array, batch_size: int, *, t_min: float = 1e-4, antithetic: bool = True) -> jax.Array:
    """t ~ U(t_min, 1) per example, [B] float32.

    ``antithetic=True`` uses MD4's low-discrepancy draw t_b = (u + b / B) mod 1 (a single u ~ U(0,1)),
    each t_b still marginally uniform, then maps [0, 1) affinely onto [t_min, 1).
    """
    if antithetic:
        u = jax.random.uniform(rng, ())
        t = jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
    else:
        t = jax.random.uniform(rng, (batch_size,))
    return t_min + (1.0 - t_min) * t


def _masked_nll_loss(logits_fn, x0, x_t, t, masked, weight, n, *, mask_id: int, normalize: str):
    """Shared tail of the absorbing losses: ``S_b = weight_b * sum_n 1[masked_bn] (-log p(x0_bn | x_t, t))``.

    x0, x_t: [B, L] int; t: [B] float (what ``logits_fn`` gets); masked: [B, L] bool; weight: [B];
    n: [B] corruptible-token counts. Returns ``(normalize_loss(S, n, normalize), aux)`` with aux
    "loss_per_token" (sum_b S_b / sum_b n_b), "mask_rate" (masked / corruptible), "mean_t".
    """
    logits = exclude_token_logit(logits_fn(x_t, t), mask_id)
    nll = -token_log_probs(logits, x0)  # [B, L]
    per_example = weight * jnp.sum(jnp.where(masked, nll, 0.0), axis=-1)  # [B]
    loss = normalize_loss(per_example, n, normalize)
    aux = {
        "loss_per_token": jnp.sum(per_example) / jnp.maximum(jnp.sum(n), 1),
        "mask_rate": jnp.sum(masked) / jnp.maximum(jnp.sum(n), 1),
        "mean_t": jnp.mean(t),
    }
    return loss, aux


def masked_diffusion_elbo(
    logits_fn: LogitsFn,
    x0: jax.Array,
    rng: jax.Array,
    *,
    mask_id: int,
    schedule: str = "linear",
    schedule_kwargs: Optional[dict] = None,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
    t: Optional[jax.Array] = None,
    t_min: float = 1e-4,
    antithetic: bool = True,
    normalize: str = "sequence",
) -> tuple[jax.Array, dict[str, Any]]:
    """Continuous-time masked-diffusion negative ELBO (MD4, Shi et al. 2024; MDLM), one-sample estimate.

        -ELBO = int_0^1 w(t) E_{q(x_t|x_0)} [ sum_n 1[x_t^n = MASK] (-log p_theta(x_0^n | x_t)) ] dt,
        w(t) = -alpha'(t) / (1 - alpha(t))

    with alpha(t) = ``schedules.masking_alpha(t, schedule, **schedule_kwargs)`` (P(token kept);
    alpha(0) = 1, alpha(1) = 0 so the prior and reconstruction terms vanish). For the linear
    schedule w(t) = 1/t. t ~ U(t_min, 1) per example (``sample_times``); each corruptible token is
    masked with probability 1 - alpha(t). A denoiser equal to the true marginal p of i.i.d. tokens
    gives E[loss] = n H(p) (alpha(t_min) - alpha(1)) / (1 - t_min) with ``normalize="sequence"``.

    Args:
      logits_fn: (x_t [B, L] int32, t [B] float32) -> [B, L, V] logits.
      x0: [B, L] int clean tokens (never equal to mask_id).
      rng: PRNG key (split into the time draw and the masking draw).
      mask_id: the absorbing token id.
      schedule, schedule_kwargs: masking schedule kind ("linear", "cosine", "polynomial") and its kwargs.
      corruptible, valid: [B, L] bool or None; only corruptible & valid positions are masked and scored.
      t: optional [B] float times to use instead of sampling (e.g. for a timestep sweep).
      t_min: lower end of the time range (keeps w(t) finite).
      antithetic: MD4 low-discrepancy time sampling.
      normalize: "sequence" | "token" | "batch_token" (module docstring).

    Returns:
      loss: scalar float32;
      aux: dict of scalars: "loss_per_token" (sum_b S_b / sum_b n_b), "mask_rate" (masked / corruptible),
        "mean_t".
    """
    _check_tokens(x0)
    check_normalize(normalize)
    kw = dict(schedule_kwargs or {})
    B = x0.shape[0]
    rng_t, rng_mask = jax.random.split(rng)
    if t is None:
        t = sample_times(rng_t, B, t_min=t_min, antithetic=antithetic)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
    alpha = schedules.masking_alpha(t, schedule, **kw)
    dalpha = schedules.masking_alpha_derivative(t, schedule, **kw)
    weight = -dalpha / jnp.maximum(1.0 - alpha, 1e-12)  # [B]

    can = combine_masks(corruptible, valid, x0.shape)
    x_t, masked = absorbing_corrupt(x0, 1.0 - alpha, rng_mask, mask_id=mask_id, corruptible=can)
    return _masked_nll_loss(logits_fn, x0, x_t, t, masked, weight, jnp.sum(can, axis=-1),
                            mask_id=mask_id, normalize=normalize)


# ----------------------------------------------------------------------------- RDM (paper 002)


def rdm_weight(t: jax.Array, num_timesteps: int, weighting: str) -> jax.Array:
    """lambda_t for the RDM loss, t: [B] int in 1..T -> [B] float32.

    * "reciprocal": 1/t — the ELBO weight of the linear schedule alpha_t = 1 - t/T (papers.md 002;
      ``--reweighting-type reciprocal`` of HKUNLP/reparam-discrete-diffusion).
    * "linear": 1 - (t - 1)/T — what paper 002's public trainer (yegcjs/DiffusionLLM,
      ``weighting="linear"``) and RDM's ``--reweighting-type linear`` call "linear".
    * "constant": 1 (the ablation).
    """
    t = jnp.asarray(t, jnp.float32)
    if weighting == "reciprocal":
        return 1.0 / t
    if weighting == "linear":
        return 1.0 - (t - 1.0) / num_timesteps
    if weighting == "constant":
        return jnp.ones_like(t)
    raise ValueError(f"weighting={weighting!r} is not one of {RDM_WEIGHTINGS}.")


def rdm_loss(
    logits_fn: LogitsFn,
    x0: jax.Array,
    rng: jax.Array,
    *,
    mask_id: int,
    num_timesteps: int = 50,
    weighting: str = "reciprocal",
    time_sampling: str = "discrete",
    min_ratio: float = 1e-3,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
    t: Optional[jax.Array] = None,
    normalize: str = "sequence",
) -> tuple[jax.Array, dict[str, Any]]:
    """Reparameterised reweighted absorbing-diffusion loss (RDM; papers.md 002).

        L = E_{t ~ U{1..T}, x_t} [ lambda_t sum_n (1 - b_t^n) (-log p_theta(x_0^n | x_t, src)) ],
        b_t^n = 1[x_t^n = x_0^n],

    where x_t masks every corruptible target token independently with probability t/T and
    lambda_t = ``rdm_weight(t, T, weighting)``. Loss only on masked target positions (never on the
    source / prompt, padding or unmasked tokens). ``logits_fn`` receives the mask level t/T.

    With ``weighting="reciprocal"`` and ``normalize="sequence"``, T * L is an unbiased estimate of the
    discrete-time negative ELBO (alpha_t = 1 - t/T); for the true marginal p of i.i.d. tokens
    E[L] = n H(p) / T.

    ``time_sampling="ratio"`` is the variant "draw r ~ U(min_ratio, 1), mask exactly ceil(r n_b)
    corruptible tokens, weight 1/r" ("reciprocal") or 1 ("constant"); ``logits_fn`` gets r. Note
    E[ceil(r n)/r] has a log-divergence at r -> 0 (hence ``min_ratio`` > 0) and exceeds n (biased vs the ELBO):
    E_r[ceil(r n)/r] = (1/(1 - r_min)) sum_k k log(b_k / a_k) over [a_k, b_k] = [(k-1)/n, k/n] ∩ [r_min, 1].

    Args:
      logits_fn: (x_t [B, L] int32, t [B] float32) -> [B, L, V] logits.
      x0: [B, L] int tokens ([source ; target], padding allowed).
      rng: PRNG key (split into the time draw and the masking draw).
      mask_id: the [MASK] id.
      num_timesteps: T (paper 002: 50).
      weighting: "reciprocal" (1/t, default) | "linear" | "constant" (see ``rdm_weight``).
      time_sampling: "discrete" (t ~ U{1..T}, Bernoulli(t/T) masks) | "ratio" (exact-count variant).
      min_ratio: lower end of r for "ratio".
      corruptible, valid: [B, L] bool or None; source and padding must be False in ``corruptible & valid``.
      t: optional [B] int timesteps in 1..T ("discrete") or float ratios ("ratio") instead of sampling.
      normalize: "sequence" | "token" (paper 002's trainer) | "batch_token".

    Returns:
      loss: scalar; aux: dict of scalars "loss_per_token", "mask_rate", "mean_t" (t/T or r).
    """
    _check_tokens(x0)
    check_normalize(normalize)
    if weighting not in RDM_WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} is not one of {RDM_WEIGHTINGS}.")
    if time_sampling not in ("discrete", "ratio"):
        raise ValueError(f"time_sampling={time_sampling!r} is not 'discrete' or 'ratio'.")
    if time_sampling == "ratio" and weighting not in ("reciprocal", "constant"):
        raise ValueError(f"time_sampling='ratio' supports weighting 'reciprocal' (1/r) or 'constant'; "
                         f"got {weighting!r}.")
    B = x0.shape[0]
    can = combine_masks(corruptible, valid, x0.shape)
    n = jnp.sum(can, axis=-1)
    rng_t, rng_mask = jax.random.split(rng)
    if time_sampling == "discrete":
        if t is None:
            t = jax.random.randint(rng_t, (B,), 1, num_timesteps + 1)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (B,))
        level = t.astype(jnp.float32) / num_timesteps
        weight = rdm_weight(t, num_timesteps, weighting)
        x_t, masked = absorbing_corrupt(x0, level, rng_mask, mask_id=mask_id, corruptible=can)
    else:  # "ratio"
        if t is None:
            t = min_ratio + (1.0 - min_ratio) * jax.random.uniform(rng_t, (B,))
        level = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
        weight = 1.0 / level if weighting == "reciprocal" else jnp.ones_like(level)
        count = jnp.ceil(level * n.astype(jnp.float32)).astype(jnp.int32)
        x_t, masked = absorbing_corrupt_count(x0, count, rng_mask, mask_id=mask_id, corruptible=can)

    return _masked_nll_loss(logits_fn, x0, x_t, level, masked, weight, n, mask_id=mask_id, normalize=normalize)
