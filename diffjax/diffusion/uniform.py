"""Uniform-random-token corruption and the step-unrolled (SUNDAE-style) denoising loss.

Paper 001 (AR2Diff, "Transfer Learning for Text Diffusion Models"; see ``shared/docs/papers.md``):
the input is [prefix (never corrupted) ; target y padded to L_max]; target tokens (PAD included)
are replaced by uniformly random vocabulary tokens at rate r ~ U(0, 1); the model is trained with
the two-step unrolled cross-entropy L = 1/2 (L^(1) + L^(2)).

Conventions: ``x0: [B, L] int``; ``corruptible: [B, L] bool`` is True on the target region (PAD
of the target included; False on the prefix); ``valid: [B, L] bool`` optional, AND-ed in (use it
for batch padding that is not part of any target). ``logits_fn(x [B, L] int32, t [B] float32) ->
[B, L, V]``; paper 001's model has no time input, the corruption rate r is passed as ``t``.
One ``rng`` in, split inside, never reused.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from diffjax.diffusion.masked import LogitsFn, check_normalize, combine_masks, normalize_loss, token_log_probs
from diffjax.diffusion.tokens import choose_tokens


def uniform_corrupt(
    x0: jax.Array,
    rate: jax.Array,
    rng: jax.Array,
    *,
    vocab_size: int,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """Uniform-token corruption (papers.md 001): each corruptible token is, with probability r,
    replaced by a token drawn uniformly from {0, ..., V-1} (which may equal the original).

        q(x_t^n | x_0^n) = (1 - r) 1[x_t^n = x_0^n] + r / V

    Args:
      x0: [B, L] int tokens; rate: scalar or [B] float r in [0, 1]; rng: PRNG key;
      vocab_size: V; corruptible, valid: [B, L] bool or None.

    Returns:
      x_t: [B, L] (dtype of x0); replaced: [B, L] bool, True where a random token was drawn.
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must be [B, L] int token ids; got shape {x0.shape}.")
    can = combine_masks(corruptible, valid, x0.shape)
    r = jnp.asarray(rate, jnp.float32)
    if r.ndim == 1:
        r = r[:, None]
    rng_u, rng_tok = jax.random.split(rng)
    replaced = (jax.random.uniform(rng_u, x0.shape) < r) & can
    random_tokens = jax.random.randint(rng_tok, x0.shape, 0, vocab_size, dtype=jnp.int32)
    x_t = jnp.where(replaced, random_tokens.astype(x0.dtype), x0)
    return x_t, replaced


def unrolled_denoising_loss(
    logits_fn: LogitsFn,
    x0: jax.Array,
    rng: jax.Array,
    *,
    vocab_size: int,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
    rate: Optional[jax.Array] = None,
    num_unroll_steps: int = 2,
    normalize: str = "sequence",
) -> tuple[jax.Array, dict[str, Any]]:
    """Step-unrolled denoising loss (SUNDAE, simplified as in papers.md 001).

        r ~ U(0, 1);  y~ = uniform_corrupt(y, r)
        l^(1) = f(prefix, y~);              L^(1) = sum_{n in target} -log softmax(l^(1))_n[y_n]
        y'_k ~ Categorical(softmax(l^(k-1))) with stop-gradient, at target positions (prefix kept)
        l^(k) = f(prefix, y'_k);            L^(k) likewise
        L = (1/K) sum_{k=1..K} L^(k)        (K = num_unroll_steps; K = 2 gives 1/2 (L^(1) + L^(2)))

    The CE runs over every target position including PAD (the model learns to emit PAD after the
    end of the output); no loss on the prefix. Gradients flow into f at every step, never through
    the samples y'_k (integer draws, additionally wrapped in ``lax.stop_gradient``).

    Args:
      logits_fn: (x [B, L] int32, t [B] float32) -> [B, L, V]; called K times, always with t = r.
      x0: [B, L] int clean [prefix ; target].
      rng: PRNG key (split into rate, corruption and one key per unrolled sample).
      vocab_size: V for the uniform corruption.
      corruptible: [B, L] bool, True on target positions (PAD included); valid: optional [B, L] bool.
      rate: optional [B] float r instead of sampling r ~ U(0, 1).
      num_unroll_steps: K >= 1.
      normalize: "sequence" (paper: summed over target positions, mean over batch) | "token" | "batch_token"
        (see ``diffjax.diffusion.masked``).

    Returns:
      loss: scalar; aux: scalars "loss_step{k}" (same normalisation, k = 1..K), "corrupt_rate"
        (replaced / target positions), "token_accuracy_step1" (argmax of l^(1) == y on target).
    """
    if num_unroll_steps < 1:
        raise ValueError(f"num_unroll_steps must be >= 1; got {num_unroll_steps}.")
    if x0.ndim != 2:
        raise ValueError(f"x0 must be [B, L] int token ids; got shape {x0.shape}.")
    check_normalize(normalize)
    B = x0.shape[0]
    can = combine_masks(corruptible, valid, x0.shape)
    n = jnp.sum(can, axis=-1)
    rngs = jax.random.split(rng, 1 + num_unroll_steps)  # rate, corruption, K-1 samples
    if rate is None:
        rate = jax.random.uniform(rngs[0], (B,))
    rate = jnp.broadcast_to(jnp.asarray(rate, jnp.float32), (B,))
    x_in, replaced = uniform_corrupt(x0, rate, rngs[1], vocab_size=vocab_size, corruptible=can)

    aux: dict[str, Any] = {}
    losses = []
    for k in range(num_unroll_steps):
        if k > 0:
            y_prev = jax.lax.stop_gradient(choose_tokens(jax.lax.stop_gradient(logits), rngs[1 + k])[0])
            x_in = jnp.where(can, y_prev.astype(x0.dtype), x0)
        logits = logits_fn(x_in, rate)
        nll = -token_log_probs(logits, x0)
        per_example = jnp.sum(jnp.where(can, nll, 0.0), axis=-1)
        losses.append(normalize_loss(per_example, n, normalize))
        aux[f"loss_step{k + 1}"] = losses[-1]
        if k == 0:
            correct = (jnp.argmax(logits, axis=-1) == x0) & can
            aux["token_accuracy_step1"] = jnp.sum(correct) / jnp.maximum(jnp.sum(n), 1)
    aux["corrupt_rate"] = jnp.sum(replaced) / jnp.maximum(jnp.sum(n), 1)
    return sum(losses) / num_unroll_steps, aux
