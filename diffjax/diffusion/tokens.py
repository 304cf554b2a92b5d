"""The one token picker of diffjax: logits -> token ids (greedy, temperature, top-k, top-p).

Used by the discrete-diffusion samplers (``discrete_sampling``), the unrolled loss of ``uniform``
and autoregressive decoding (``diffjax.models.llama.generate``). Pure ``jax.numpy``; no Flax.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def filter_logits(logits: jax.Array, *, top_k: Optional[int] = None, top_p: Optional[float] = None) -> jax.Array:
    """Sets to ``-inf`` every logit outside the top-k / nucleus (top-p) set; ``[..., V] -> [..., V]`` float32.

    * ``top_k = k`` (1 <= k <= V): keeps the k largest logits of each row (ties at the k-th value are
      all kept, so a row may keep more than k);
    * ``top_p = p`` (0 < p <= 1): keeps the smallest set of largest-probability tokens whose
      probability (softmax of ``logits``) sums to >= p — a token is kept when the probability mass
      of the tokens strictly before it in descending order is < p (the most likely token is always
      kept; HF ``TopPLogitsWarper`` semantics, up to ties);
    * both: top-k first, then top-p on the renormalised survivors (HF order).
    ``None`` (default) disables a filter; with neither, ``logits`` is returned as float32 unchanged.
    """
    logits = logits.astype(jnp.float32)
    if top_k is not None:
        k = int(top_k)
        if not 1 <= k <= logits.shape[-1]:
            raise ValueError(f"top_k must be in 1..V={logits.shape[-1]}; got {top_k!r}.")
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1]; got {top_p!r}.")
        order = jnp.argsort(-logits, axis=-1, stable=True)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        keep_sorted = keep_sorted.at[..., 0].set(True)
        keep = jnp.zeros_like(keep_sorted)
        keep = jnp.put_along_axis(keep, order, keep_sorted, axis=-1, inplace=False)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def choose_tokens(
    logits: jax.Array,
    rng: Optional[jax.Array],
    *,
    temperature: float = 1.0,
    greedy: bool = False,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
) -> tuple[jax.Array, jax.Array]:
    """Picks one token per position: ``logits [..., V] -> (tokens [...] int32, log p(token) [...] float32)``.

    * ``greedy=True``: ``argmax(logits)`` (``rng`` unused, may be None; filters never change it);
    * else a draw from ``softmax(filter_logits(logits, top_k, top_p) / temperature)`` with ``rng``
      (``jax.random.categorical`` on the float32 logits), ``temperature > 0``.
    The returned log-probability is always under the *unfiltered, temperature-1* distribution,
    ``log_softmax(logits)[token]`` — the confidence score of paper 002's top-k decoding and the chain
    score of paper 001's refinement (papers.md 001, 002).
    """
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if greedy:
        tok = jnp.argmax(logits, axis=-1)
    else:
        if rng is None:
            raise ValueError("choose_tokens needs an rng unless greedy=True.")
        if not isinstance(temperature, jax.Array) and not float(temperature) > 0:
            raise ValueError(f"temperature={temperature!r} with sampling: must be > 0 (use greedy=True for argmax).")
        filtered = logits if top_k is None and top_p is None else filter_logits(logits, top_k=top_k, top_p=top_p)
        tok = jax.random.categorical(rng, filtered / temperature, axis=-1)
    tok = tok.astype(jnp.int32)
    return tok, jnp.take_along_axis(logp, tok[..., None], axis=-1)[..., 0]
