"""Samplers for discrete text diffusion, each one ``jax.lax.scan`` over the denoising steps.

* ``topk_unmask_sample`` — paper 002's reparameterised top-k confidence decoding (absorbing).
* ``ancestral_unmask_sample`` — MD4-style random-order ancestral unmasking (absorbing).
* ``iterative_refinement_sample`` — paper 001's refinement from uniform random tokens, N samples
  in parallel, keep the highest model log-prob.
* ``threshold_unmask_sample`` — confidence-threshold parallel decoding (Fast-dLLM style): every masked
  position whose confidence exceeds a threshold is unmasked at once (at least one per step), a
  ``lax.while_loop`` that stops as soon as nothing is masked.
* ``block_unmask_sample`` — semi-autoregressive block decoding (LLaDA style): the generated span is
  cut into blocks decoded left to right, any of the absorbing decoders above inside a block.
* the decoders by name, with the config fields each takes: ``diffusion/decoders.py``.

Conventions: ``x_init: [B, L] int`` holds the prompt / source at non-generated positions (its
values at generated positions are ignored); ``corruptible: [B, L] bool`` marks the positions to
generate (False on the prompt); ``valid: [B, L] bool`` (optional) limits each example's target
length — positions with ``corruptible & valid`` False are returned unchanged from ``x_init``, so
variable target lengths are handled by a valid mask. ``logits_fn(x [B, L] int32, t [B] float32)
-> [B, L, V]`` with t the current noise level in (0, 1] (fraction of steps still to go).
``num_steps`` (and ``num_samples``) must be Python ints. To jit, close over ``logits_fn`` and the
static arguments: ``jax.jit(lambda x, rng: topk_unmask_sample(fn, x, rng, mask_id=m, num_steps=50))``.
Temperature divides the logits before sampling; ``greedy=True`` takes the argmax instead.
Confidence scores are always the temperature-1 log-probabilities.
``return_scores=True`` (absorbing decoders) also returns the *decode-time* scores ``[B, L] float32``:
at a generated position, log p(token) under the temperature-1 model of the step that unmasked it
(its last unmasking, if re-masked in between), 0 elsewhere — the ``output_scores`` of paper 002's
generator, whose mean over a candidate picks among the length beam (yegcjs/DiffusionLLM
``score_select``). Outputs come as ``tokens[, history][, scores][, num_calls]``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from diffjax.diffusion import schedules
from diffjax.diffusion.masked import LogitsFn, combine_masks, exclude_token_logit
from diffjax.diffusion.tokens import choose_tokens


def _check(x_init: jax.Array, num_steps: int) -> None:
    if x_init.ndim != 2 or not jnp.issubdtype(x_init.dtype, jnp.integer):
        raise ValueError(f"x_init must be [B, L] int token ids; got shape {x_init.shape}, dtype {x_init.dtype}.")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a Python int >= 1 (it fixes the scan length); got {num_steps!r}.")


def _top_count(scores: jax.Array, candidates: jax.Array, count: jax.Array) -> jax.Array:
    """Boolean [B, L]: the ``count_b`` highest-scoring candidate positions of each row (ties -> lower index).

    scores: [B, L] float; candidates: [B, L] bool; count: [B] int (clipped to the number of candidates).
    """
    key = jnp.where(candidates, -scores, jnp.inf)
    key = jnp.where(jnp.isnan(key), jnp.inf, key)
    order = jnp.argsort(key, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return (ranks < count[:, None]) & candidates


def sampler_outputs(x, hist, scores, calls, return_history, return_scores, return_num_calls):
    """``x`` alone, or the tuple ``(x[, hist][, scores][, calls])`` of the requested extras."""
    out = (x,)
    if return_history:
        out += (hist,)
    if return_scores:
        out += (scores,)
    if return_num_calls:
        out += (calls,)
    return out[0] if len(out) == 1 else out



def _scan_steps(step, init, rng: jax.Array, num_steps: int):
    """``lax.scan`` of ``step(carry, (i, key))`` over steps ``i = 1..num_steps``, one key per step split
    from ``rng``: the loop every sampler here runs. Returns ``(carry, stacked outputs)``."""
    steps = jnp.arange(1, num_steps + 1, dtype=jnp.int32)
    return jax.lax.scan(step, init, (steps, jax.random.split(rng, num_steps)))


def topk_unmask_sample(
    logits_fn: LogitsFn,
    x_init: jax.Array,
    rng: jax.Array,
    *,
    mask_id: int,
    num_steps: int = 50,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
    temperature: float = 1.0,
    greedy: bool = True,
    top_p: Optional[float] = None,
    remask: bool = True,
    unmask_schedule: str = "linear",
    return_history: bool = False,
    return_scores: bool = False,
):
    """Top-k confidence unmasking (papers.md 002, reparameterised decoding).

    Start: every generated position (``corruptible & valid``) is [MASK]. At step i = 1..N:
      1. logits = logits_fn(x, t_i), t_i = 1 - (i - 1)/N; the [MASK] logit is excluded;
      2. x^_0^n = argmax (greedy) or a sample of softmax(logits / temperature); s^n = log p(x^_0^n);
      3. k_i generated positions are unmasked afterwards, the rest [MASK], with
         k_i = L_valid - floor(L_valid * (N - i) / N) = ceil(L_valid * i / N) (``unmask_schedule="linear"``,
         papers.md 002: the authors keep ``cutoff_len = int(L * (t - 1) / T)`` masked after step
         t = N - i + 1; computed here in exact integers, where the authors' float ``L * (1 - i / N)``
         can land one below an exact integer) or
         k_i = L_valid - floor(L_valid * cos(pi/2 * i / N)) (``"cosine"``, the default of paper 002's
         public generator, yegcjs/DiffusionLLM):
         * ``remask=True`` (RDM, papers.md default): the top-k_i of *all* generated positions by s^n
           stay / become unmasked and every other one is (re-)masked. A chosen position that was
           already decoded **keeps its token** (it is never rewritten: the RDM loss never trains
           predictions at unmasked inputs); a chosen position that was [MASK] gets x^_0^n. The score
           of an already-decoded position is s^n = log p(x^_0^n) of the model's current prediction
           there (not of the kept token), as in the authors' ``_reparam_decoding``, "uncond" mode
           (HKUNLP/reparam-discrete-diffusion; yegcjs/DiffusionLLM ``dd_generator.py``, papers.md 002
           "Sampling" step 3). With greedy decoding the prediction at a decoded input usually is
           the kept token itself;
         * ``remask=False``: decoded tokens are frozen; the top (k_i - #decoded) still-masked positions
           by s^n are set to x^_0^n.
    Exactly k_i generated positions are unmasked after step i (k_N = L_valid, so no mask remains);
    non-generated positions (prompt, beyond the target length) keep their ``x_init`` values.

    Args:
      logits_fn: (x [B, L] int32, t [B] float32) -> [B, L, V].
      x_init: [B, L] int prompt / source tokens (values at generated positions are ignored).
      rng: PRNG key (split into one key per step).
      mask_id: the [MASK] id; num_steps: N.
      corruptible, valid: [B, L] bool or None — positions to generate / per-example target length.
      temperature, greedy, top_p: token choice (``tokens.choose_tokens``; top_p = nucleus when sampling); remask, unmask_schedule: see above.
      return_history: also return the token array after every step.
      return_scores: also return the decode-time scores [B, L] float32 (module docstring): the
        log-prob s^n a position had at the step its kept token was unmasked.

    Returns:
      tokens: [B, L] int32[, history [N, B, L] int32][, scores [B, L] float32].
    """
    _check(x_init, num_steps)
    if unmask_schedule not in ("linear", "cosine"):
        raise ValueError(f"unmask_schedule={unmask_schedule!r} is not 'linear' or 'cosine'.")
    B = x_init.shape[0]
    gen = combine_masks(corruptible, valid, x_init.shape)
    n_gen = jnp.sum(gen, axis=-1).astype(jnp.int32)  # [B]

    def num_unmasked(i):  # k_i, [B] int32 in [0, n_gen]
        if unmask_schedule == "linear":
            return n_gen - (n_gen * (num_steps - i)) // num_steps  # exact ceil(L_valid * i / N)
        still = jnp.floor(n_gen * jnp.cos(0.5 * jnp.pi * i.astype(jnp.float32) / num_steps)).astype(jnp.int32)
        return jnp.where(i == num_steps, n_gen, jnp.clip(n_gen - still, 0, n_gen))

    x = jnp.where(gen, mask_id, x_init).astype(jnp.int32)

    def step(carry, inp):
        x, sc = carry  # sc: decode-time scores of the decoded positions, 0 at masked / fixed ones
        i, key = inp
        t = jnp.full((B,), 1.0 - (i - 1).astype(jnp.float32) / num_steps)
        logits = exclude_token_logit(logits_fn(x, t), mask_id)
        tok, score = choose_tokens(logits, key, temperature=temperature, greedy=greedy, top_p=top_p)
        k = num_unmasked(i)
        if remask:
            keep = _top_count(score, gen, k)
            decoded = x != mask_id  # at generated positions: already decoded (never rewritten)
            x_new = jnp.where(gen, jnp.where(keep, jnp.where(decoded, x, tok), mask_id), x)
            sc_new = jnp.where(gen, jnp.where(keep, jnp.where(decoded, sc, score), 0.0), sc)
        else:
            still_masked = gen & (x == mask_id)
            n_decoded = jnp.sum(gen & ~still_masked, axis=-1)
            choose = _top_count(score, still_masked, k - n_decoded)
            x_new = jnp.where(choose, tok, x)
            sc_new = jnp.where(choose, score, sc)
        return (x_new, sc_new), (x_new if return_history else None)

    (x, sc), hist = _scan_steps(step, (x, jnp.zeros(x.shape, jnp.float32)), rng, num_steps)
    return sampler_outputs(x, hist, sc, None, return_history, return_scores, False)


def ancestral_unmask_sample(
    logits_fn: LogitsFn,
    x_init: jax.Array,
    rng: jax.Array,
    *,
    mask_id: int,
    num_steps: int = 50,
    schedule: str = "linear",
    schedule_kwargs: Optional[dict] = None,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
    temperature: float = 1.0,
    greedy: bool = False,
    top_p: Optional[float] = None,
    return_history: bool = False,
    return_scores: bool = False,
):
    """Random-order ancestral unmasking (MD4 / MDLM reverse process of the absorbing diffusion).

    Times t_i = 1 - (i - 1)/N, s_i = 1 - i/N. At step i each still-masked generated position is
    unmasked independently with probability

        (alpha(s_i) - alpha(t_i)) / (1 - alpha(t_i))     (alpha = schedules.masking_alpha(., schedule))

    and gets a token drawn from softmax(logits / temperature) of logits_fn(x, t_i) (argmax if greedy,
    [MASK] excluded); unmasked tokens never change. The last step (s = 0, alpha = 1) unmasks all
    remaining positions, so no [MASK] is left; the expected unmasked fraction after step i is alpha(s_i).

    Args / Returns: as ``topk_unmask_sample`` plus ``schedule``, ``schedule_kwargs`` (the masking
    schedule the model was trained with). Defaults sample (greedy=False), temperature 1. Decode-time
    scores (``return_scores``): log p(token) (temperature 1) at the step that unmasked it.
    """
    _check(x_init, num_steps)
    kw = dict(schedule_kwargs or {})
    B = x_init.shape[0]
    gen = combine_masks(corruptible, valid, x_init.shape)
    x = jnp.where(gen, mask_id, x_init).astype(jnp.int32)

    def step(carry, inp):
        x, sc = carry
        i, key = inp
        k_tok, k_unmask = jax.random.split(key)
        t = 1.0 - (i - 1).astype(jnp.float32) / num_steps
        s = 1.0 - i.astype(jnp.float32) / num_steps
        a_t = schedules.masking_alpha(t, schedule, **kw)
        a_s = schedules.masking_alpha(s, schedule, **kw)
        p_unmask = jnp.clip((a_s - a_t) / jnp.maximum(1.0 - a_t, 1e-12), 0.0, 1.0)
        p_unmask = jnp.where(i == num_steps, 1.0, p_unmask)
        logits = exclude_token_logit(logits_fn(x, jnp.full((B,), t)), mask_id)
        tok, logp = choose_tokens(logits, k_tok, temperature=temperature, greedy=greedy, top_p=top_p)
        still_masked = gen & (x == mask_id)
        unmask = still_masked & (jax.random.uniform(k_unmask, x.shape) < p_unmask)
        x_new = jnp.where(unmask, tok, x)
        return (x_new, jnp.where(unmask, logp, sc)), (x_new if return_history else None)

    (x, sc), hist = _scan_steps(step, (x, jnp.zeros(x.shape, jnp.float32)), rng, num_steps)
    return sampler_outputs(x, hist, sc, None, return_history, return_scores, False)


def iterative_refinement_sample(
    logits_fn: LogitsFn,
    x_init: jax.Array,
    rng: jax.Array,
    *,
    vocab_size: int,
    num_steps: int = 10,
    temperature: float = 0.2,
    num_samples: int = 8,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
    greedy: bool = False,
    score: str = "last_step",
    return_all: bool = False,
):
    """Iterative refinement from uniform random tokens (papers.md 001, SUNDAE-style decoding).

        y^(0) ~ Uniform{0..V-1} at generated positions (prompt kept);
        y^(k) ~ softmax(f(prefix, y^(k-1)) / tau) at generated positions, k = 1..K  (argmax if greedy);
    N chains per example run in parallel (the batch is tiled to [B * N, L]) and the chain with the
    highest model log-prob is returned. The log-prob is summed over generated positions:
      * ``score="last_step"``: log p(y^(K) | y^(K-1)) = sum_n log softmax(f(y^(K-1)))_n[y^(K)_n]
        (temperature 1; no extra forward pass);
      * ``score="rescore"``: one more pass, sum_n log softmax(f(y^(K), t=0))_n[y^(K)_n].
    logits_fn receives t_k = 1 - (k - 1)/K (paper 001's model ignores it).

    Args:
      logits_fn: (x [B', L] int32, t [B'] float32) -> [B', L, V] with B' = B * num_samples.
      x_init: [B, L] int prompt tokens; rng: PRNG key (init draw + one key per step).
      vocab_size: V of the initial uniform draw; num_steps: K (paper: 10); temperature: tau (0.2);
      num_samples: N (8); corruptible, valid: [B, L] bool or None; greedy; score: see above.
      return_all: also return every chain.

    Returns:
      tokens [B, L] int32 and scores [B] float32 of the selected chain; with ``return_all`` also
      all_tokens [B, N, L] and all_scores [B, N].
    """
    _check(x_init, num_steps)
    if score not in ("last_step", "rescore"):
        raise ValueError(f"score={score!r} is not 'last_step' or 'rescore'.")
    B, L = x_init.shape
    N = int(num_samples)
    gen = jnp.repeat(combine_masks(corruptible, valid, x_init.shape), N, axis=0)  # [B*N, L]
    base = jnp.repeat(x_init.astype(jnp.int32), N, axis=0)
    rng_init, rng_steps = jax.random.split(rng)
    y = jnp.where(gen, jax.random.randint(rng_init, base.shape, 0, vocab_size, dtype=jnp.int32), base)

    def step(carry, inp):
        y, _ = carry
        k, key = inp
        t = jnp.full((B * N,), 1.0 - (k - 1).astype(jnp.float32) / num_steps)
        tok, logp = choose_tokens(logits_fn(y, t), key, temperature=temperature, greedy=greedy)
        y_new = jnp.where(gen, tok, base)
        return (y_new, jnp.sum(jnp.where(gen, logp, 0.0), axis=-1)), None

    (y, scores), _ = _scan_steps(step, (y, jnp.zeros((B * N,), jnp.float32)), rng_steps, num_steps)
    if score == "rescore":
        logp = jax.nn.log_softmax(logits_fn(y, jnp.zeros((B * N,), jnp.float32)).astype(jnp.float32), -1)
        lp = jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
        scores = jnp.sum(jnp.where(gen, lp, 0.0), axis=-1)
    all_tokens = y.reshape(B, N, L)
    all_scores = scores.reshape(B, N)
    best = jnp.argmax(all_scores, axis=-1)
    tokens = jnp.take_along_axis(all_tokens, best[:, None, None], axis=1)[:, 0]
    best_scores = jnp.take_along_axis(all_scores, best[:, None], axis=1)[:, 0]
    if return_all:
        return tokens, best_scores, all_tokens, all_scores
    return tokens, best_scores


def threshold_unmask_sample(
    logits_fn: LogitsFn,
    x_init: jax.Array,
    rng: jax.Array,
    *,
    mask_id: int,
    threshold: float = 0.9,
    num_steps: int = 50,
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
    temperature: float = 1.0,
    greedy: bool = True,
    top_p: Optional[float] = None,
    return_history: bool = False,
    return_scores: bool = False,
    return_num_calls: bool = False,
):
    """Confidence-threshold parallel decoding (as Fast-dLLM / LLaDA's "low-confidence remasking with a
    threshold"); decoded tokens are frozen.

    Step i = 0, 1, ... (one ``logits_fn`` call each, t = fraction of the row's generated positions still
    masked): x^_0^n and its confidence c^n = p(x^_0^n) (temperature 1, [MASK] excluded) at every
    position. Among the still-masked generated positions, every one with c^n > ``threshold`` is
    unmasked, and at least the top m_i by c^n with m_i = ceil(R_i / (num_steps - i)) (R_i = masked
    count of the row), so at least one per step while masks remain and none after ``num_steps``.
    A ``lax.while_loop``: it stops when no row has a mask left (or after ``num_steps`` steps).

    Args: as ``topk_unmask_sample``; ``num_steps`` is the maximum number of steps (model calls);
      ``threshold`` in [0, 1] (1.0 never fires: then it is a linear-count confidence decoder).
      return_history: also [num_steps, B, L] int32 (steps not run repeat the final state);
      return_scores: also the decode-time scores [B, L] float32 (log p of each token when unmasked);
      return_num_calls: also [B] int32, the steps each row took (model calls while it had a mask).

    Returns: tokens [B, L] int32 [, history] [, scores] [, num_calls].
    """
    _check(x_init, num_steps)
    B, L = x_init.shape
    gen = combine_masks(corruptible, valid, x_init.shape)
    n_gen = jnp.maximum(jnp.sum(gen, axis=-1), 1).astype(jnp.float32)
    x = jnp.where(gen, mask_id, x_init).astype(jnp.int32)
    hist = jnp.zeros((num_steps if return_history else 0, B, L), jnp.int32)

    def cond(c):
        i, x = c[0], c[1]
        return (i < num_steps) & jnp.any(gen & (x == mask_id))

    def body(c):
        i, x, hist, calls, sc = c
        still = gen & (x == mask_id)
        remaining = jnp.sum(still, axis=-1)
        t = remaining.astype(jnp.float32) / n_gen
        logits = exclude_token_logit(logits_fn(x, t), mask_id)
        tok, logp = choose_tokens(logits, jax.random.fold_in(rng, i), temperature=temperature, greedy=greedy,
                                  top_p=top_p)
        need = -(-remaining // (num_steps - i))  # ceil(R / steps left)
        unmask = (still & (jnp.exp(logp) > threshold)) | _top_count(logp, still, need)
        x_new = jnp.where(unmask, tok, x)
        if return_history:
            hist = hist.at[i].set(x_new)
        return i + 1, x_new, hist, calls + (remaining > 0).astype(jnp.int32), jnp.where(unmask, logp, sc)

    init = (jnp.zeros((), jnp.int32), x, hist, jnp.zeros((B,), jnp.int32), jnp.zeros(x.shape, jnp.float32))
    n_run, x, hist, calls, sc = jax.lax.while_loop(cond, body, init)
    if return_history:
        hist = jnp.where((jnp.arange(num_steps) < n_run)[:, None, None], hist, x[None])
    return sampler_outputs(x, hist, sc, calls, return_history, return_scores, return_num_calls)


BLOCK_INNER = {"topk": topk_unmask_sample, "ancestral": ancestral_unmask_sample,
               "threshold": threshold_unmask_sample}  # the decoders block decoding runs inside a block


def block_unmask_sample(
    logits_fn: LogitsFn,
    x_init: jax.Array,
    rng: jax.Array,
    *,
    mask_id: int,
    num_blocks: int = 4,
    num_steps: int = 8,
    inner: str = "topk",
    corruptible: Optional[jax.Array] = None,
    valid: Optional[jax.Array] = None,
    return_history: bool = False,
    return_scores: bool = False,
    return_num_calls: bool = False,
    **inner_kwargs,
):
    """Semi-autoregressive block decoding (LLaDA / Block Diffusion style), one ``lax.scan`` over blocks.

    The generated positions of a row (``corruptible & valid``, n of them, in position order) are cut into
    ``num_blocks`` contiguous blocks: the generated position of rank r (0-based) is in block
    floor(r * num_blocks / n). Every generated position starts as [MASK]; block b = 0, 1, ... is then
    decoded by the decoder ``inner`` ("topk", "ancestral" or "threshold", with ``inner_kwargs`` such as
    ``temperature``, ``greedy``, ``top_p``, ``remask``, ``threshold``) in ``num_steps`` steps, seeing the
    decoded earlier blocks and the still-masked later ones; it changes only its own block. The model
    is called ``num_blocks * num_steps`` times (fewer with "threshold", which stops early per block).

    Returns: tokens [B, L] int32 [, history [num_blocks * num_steps, B, L]] [, scores [B, L] float32:
    the inner decoder's decode-time scores] [, num_calls [B] int32].
    """
    _check(x_init, num_steps)
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a Python int >= 1; got {num_blocks!r}.")
    if inner not in BLOCK_INNER:
        raise ValueError(f"inner={inner!r} is not 'topk', 'ancestral' or 'threshold'.")
    B = x_init.shape[0]
    gen = combine_masks(corruptible, valid, x_init.shape)
    n_gen = jnp.maximum(jnp.sum(gen, axis=-1, keepdims=True), 1)
    rank = jnp.cumsum(gen, axis=-1) - 1
    block_id = jnp.where(gen, (rank * num_blocks) // n_gen, -1)
    x = jnp.where(gen, mask_id, x_init).astype(jnp.int32)
    fn = BLOCK_INNER[inner]
    extra = {"return_num_calls": True} if inner == "threshold" else {}

    def step(carry, inp):
        x, sc = carry
        b, key = inp
        out = fn(logits_fn, x, key, mask_id=mask_id, num_steps=num_steps, corruptible=gen & (block_id == b),
                 return_history=return_history, return_scores=True, **extra, **inner_kwargs)
        x_new = out[0]
        hist = out[1] if return_history else None
        sc_new = jnp.where(block_id == b, out[1 + int(return_history)], sc)
        calls = out[-1] if inner == "threshold" else jnp.full((B,), num_steps, jnp.int32)
        return (x_new, sc_new), (hist, calls)

    blocks = jnp.arange(num_blocks, dtype=jnp.int32)
    init = (x, jnp.zeros(x.shape, jnp.float32))
    (x, sc), (hist, calls) = jax.lax.scan(step, init, (blocks, jax.random.split(rng, num_blocks)))
    if return_history:
        hist = hist.reshape((-1,) + hist.shape[2:])
    return sampler_outputs(x, hist, sc, jnp.sum(calls, axis=0), return_history, return_scores, return_num_calls)

