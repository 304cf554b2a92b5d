"""Block decoding with an approximate K/V cache (Fast-dLLM, Wu et al. 2025): ``block_sample``, the ``block``
decoder of ``diffusion/decoders.py``, with ``cache = "none" | "prefix" | "dual"``.

Semi-autoregressive block decoding (``discrete_sampling.block_unmask_sample``) calls the model on the whole
row at every step, though only the current block changes. With a cache, at each block boundary the whole
row is run once and every layer's keys / values are kept (``CachedLogits.kv``); the steps inside the block
then run the model only on a window of the row (``CachedLogits.window``), whose queries attend over the
window's fresh keys / values and the cached ones everywhere else:

* ``"prefix"``: the window is the current block and everything generated after it (plus one slot, the
  closing [SEP] of a length-head row); the prompt and the decoded blocks come from the cache.
* ``"dual"``: the window is the current block alone; the later blocks (still [MASK]) come from the cache too.

``cache_refresh="block"`` (Fast-dLLM) refreshes the cache at every block boundary, so the cached keys are
those of the row as it was when the block began: an approximation. ``cache_refresh="step"`` refreshes it
before every step, which makes each window's logits equal to the full row's (the output equals
``cache="none"`` token for token under greedy choice; sampled draws are taken over the window's shape, so
a sampled run equals it in distribution, not draw for draw).

Static shapes: the blocks are a Python loop (``num_blocks`` is a static int), each one a ``lax`` loop
(the inner decoder's) over a window of static width; the window's start is dynamic, per row
(``lax.dynamic_slice`` of each row, clamped to [0, L - width]). Widths: with G = ``max_generated`` (a static
bound on a row's generated positions, default L) and span = ceil(G / num_blocks), ``"dual"``: span;
``"prefix"``, block b: (num_blocks - b) * span + 1 (both at most L). A block lies inside its window when a
row's generated positions are contiguous (both text tasks' rows: the slots after the prompt), which the
cached decoder assumes. The cache is an operand of the block's loop, made between blocks (block refresh) or
inside the loop body (step refresh).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from diffjax.diffusion import discrete_sampling as ds
from diffjax.diffusion.masked import combine_masks

CACHE_MODES = ("none", "prefix", "dual")
CACHE_REFRESH = ("block", "step")


class CachedLogits(NamedTuple):
    """A ``logits_fn`` with a K/V cache: callable as ``logits_fn(x [B, L], t [B]) -> [B, L, V]`` (``full``), plus
    ``kv(x [B, L]) -> cache`` (any pytree: every layer's keys / values over the row) and
    ``window(x [B, L], start [B] int32, width: int, cache) -> [B, width, V]``: the logits of slots
    ``[start_b, start_b + width)`` (start clamped to [0, L - width]) computed on those slots alone, over the
    cached keys / values elsewhere. The models' own: ``models/bert.py`` / ``models/llama.py``
    ``kv_cache`` / ``window_logits``."""

    full: Callable
    kv: Callable
    window: Callable

    def __call__(self, x, t):
        return self.full(x, t)


def slice_rows(full, start, width: int):
    """Per-row window: full [B, S, ...], start [B] int -> [B, width, ...], row b's slots
    ``[start_b, start_b + width)`` (start clamped to [0, S - width], as ``lax.dynamic_slice``)."""
    return jax.vmap(lambda f, s: jax.lax.dynamic_slice_in_dim(f, s, width, axis=0))(full, jnp.asarray(start, jnp.int32))


def splice_rows(full, rows, start):
    """Per-row window write, the inverse of ``slice_rows``: full [B, S, ...] with ``rows`` [B, W, ...] written at
    slots ``[start_b, start_b + W)`` of row b (start clamped to [0, S - W], as ``lax.dynamic_update_slice``)."""
    return jax.vmap(lambda f, r, s: jax.lax.dynamic_update_slice_in_dim(f, r.astype(f.dtype), s, axis=0))(
        full, rows, jnp.asarray(start, jnp.int32))


def window_widths(length: int, num_blocks: int, cache: str, max_generated: Optional[int] = None) -> list[int]:
    """The static window width of each block (module docstring), each at most ``length``."""
    span = -(-int(max_generated or length) // num_blocks)
    if cache == "dual":
        return [min(length, span)] * num_blocks
    return [min(length, (num_blocks - b) * span + 1) for b in range(num_blocks)]


def block_sample(logits_fn, x_init: jax.Array, rng: jax.Array, *, cache: str = "none", cache_refresh: str = "block",
                 max_generated: Optional[int] = None, **kwargs):
    """The ``block`` decoder: ``discrete_sampling.block_unmask_sample`` (``cache="none"``) or the same blocks,
    keys and inner decoder with a K/V cache (module docstring; ``logits_fn`` must then be a ``CachedLogits``).

    Args: as ``block_unmask_sample`` (``mask_id``, ``num_blocks``, ``num_steps``, ``inner``, ``corruptible``,
      ``valid``, ``return_*`` and the inner decoder's options) plus ``cache``, ``cache_refresh`` ("block" |
      "step") and ``max_generated`` (static bound on a row's generated positions; sets the window widths).
    Returns: as ``block_unmask_sample``; ``num_calls`` counts the steps (one window call each), not the
      refreshes (one full-row K/V pass per block, or per step with ``cache_refresh="step"``).
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache={cache!r}: choose one of {CACHE_MODES}.")
    if cache_refresh not in CACHE_REFRESH:
        raise ValueError(f"cache_refresh={cache_refresh!r}: choose one of {CACHE_REFRESH}.")
    if cache == "none":
        return ds.block_unmask_sample(logits_fn, x_init, rng, **kwargs)
    if not isinstance(logits_fn, CachedLogits):
        raise ValueError(f"cache={cache!r} needs a logits_fn with a K/V cache (cached_decoding.CachedLogits); "
                         f"got {type(logits_fn).__name__}.")
    return _cached_blocks(logits_fn, x_init, rng, cache=cache, cache_refresh=cache_refresh,
                          max_generated=max_generated, **kwargs)


def _cached_blocks(model: CachedLogits, x_init, rng, *, mask_id: int, cache: str, cache_refresh: str,
                   max_generated: Optional[int], num_blocks: int = 4, num_steps: int = 8, inner: str = "topk",
                   corruptible=None, valid=None, return_history: bool = False, return_scores: bool = False,
                   return_num_calls: bool = False, **inner_kwargs):
    """``block_sample`` with ``cache`` "prefix" / "dual": blocks, keys and inner decoder as
    ``block_unmask_sample``; each block decoded on its window (module docstring)."""
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a Python int >= 1; got {num_blocks!r}.")
    if inner not in ds.BLOCK_INNER:
        raise ValueError(f"inner={inner!r} is not one of {tuple(ds.BLOCK_INNER)}.")
    B, L = x_init.shape
    gen = combine_masks(corruptible, valid, x_init.shape)
    n_gen = jnp.maximum(jnp.sum(gen, axis=-1, keepdims=True), 1)
    block_id = jnp.where(gen, ((jnp.cumsum(gen, axis=-1) - 1) * num_blocks) // n_gen, -1)
    x = jnp.where(gen, mask_id, x_init).astype(jnp.int32)
    sc = jnp.zeros(x.shape, jnp.float32)
    calls = jnp.zeros((B,), jnp.int32)
    fn = ds.BLOCK_INNER[inner]
    extra = {"return_num_calls": True} if inner == "threshold" else {}
    hists = []
    for b, (width, key) in enumerate(zip(window_widths(L, num_blocks, cache, max_generated),
                                         jax.random.split(rng, num_blocks))):
        in_block = block_id == b
        start = jnp.clip(jnp.argmax(in_block, axis=-1).astype(jnp.int32), 0, L - width)  # [B]
        kv = model.kv(x)  # the refresh at the block boundary

        def logits_fn(x_w, t, base=x, start=start, width=width, kv=kv):
            del t
            row = splice_rows(base, x_w, start)  # slots outside the window do not change within a block
            return model.window(row, start, width, model.kv(row) if cache_refresh == "step" else kv)

        out = fn(logits_fn, slice_rows(x, start, width), key, mask_id=mask_id, num_steps=num_steps,
                 corruptible=slice_rows(in_block, start, width), return_history=return_history, return_scores=True,
                 **extra, **inner_kwargs)
        if return_history:  # [num_steps, B, W] -> [num_steps, B, L]
            hists.append(jax.vmap(lambda h, base=x, start=start: splice_rows(base, h, start))(out[1]))
        sc = jnp.where(in_block, splice_rows(sc, out[1 + int(return_history)], start), sc)
        calls = calls + (out[-1] if inner == "threshold" else num_steps)
        x = splice_rows(x, out[0], start)
    hist = jnp.concatenate(hists, axis=0) if return_history else None
    return ds.sampler_outputs(x, hist, sc, calls, return_history, return_scores, return_num_calls)
