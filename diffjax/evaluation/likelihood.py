"""Log-likelihoods of text under a diffusion LM, as an evaluation harness asks for them: pure numpy, no
diffjax, no harness (``evaluation/harness.py`` binds them to a trained run; ``evaluation/lm_eval.py`` to
lm-evaluation-harness).

**Rows.** ``pack_pair`` lays one (context, continuation) pair of token ids out as the task's rows do:
``start context sep | continuation end pad ...`` in a static row of ``length`` slots (a missing special id
is left out; ``sep`` only after a non-empty context). A context that does not fit loses its first tokens;
a continuation that does not fit is an error (its likelihood would be another string's).

**Masked diffusion: the Monte-Carlo ELBO** (LLaDA, Nie et al. 2025, the conditional likelihood bound in its
lower-variance form). For a continuation ``r`` of ``n`` tokens after the context ``p``:

    log p(r | p) >= E_{l ~ U{1..n}} E_{M: l of the n positions, uniformly} [ (n / l) sum_{i in M} log p(r_i | p, r_M) ]

where ``r_M`` is ``r`` with the positions ``M`` replaced by [MASK]. ``elbo_masks`` draws ``num_samples`` such
``(l, M)`` per request from ``numpy.random.default_rng([seed, request id])`` (deterministic in the seed and the
request, whatever the batching); ``elbo_estimate`` is the mean over samples of ``(n / l) * sum_{i in M} log p``.
**greedy**: one more pass with every continuation position masked; the continuation counts as greedy when
the argmax at each of its positions is its token (an approximation of greedy decoding, which would unmask
in several steps).

**Autoregressive runs**: ``log p(r | p) = sum_i log p(r_i | p, r_<i)``, exact (``ar_log_likelihood``).

**Rolling** (perplexity tasks): ``rolling_windows`` cuts a text into disjoint continuation windows, each
conditioned on the tokens just before it; the sum of the windows' log-likelihoods is the text's.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Special ids and the static length of the scored rows (``None``: the layout has no such token)."""

    length: int
    pad_id: int
    start_id: int | None = None
    sep_id: int | None = None
    end_id: int | None = None


def pack_pair(context: Sequence[int], continuation: Sequence[int], layout: RowLayout) -> dict:
    """One (context ids, continuation ids) pair -> ``tokens [L] int32``, ``valid [L] bool`` (slots holding the
    example), ``target [L] bool`` (the continuation's slots), ``prompt_length`` (slots before the continuation)
    and ``context_cut`` (context tokens dropped from the left to fit). Layout: module docstring."""
    L, cont = int(layout.length), [int(t) for t in continuation]
    if not cont:
        raise ValueError("an empty continuation has no likelihood to score")
    head = [] if layout.start_id is None else [int(layout.start_id)]
    tail = [] if layout.end_id is None else [int(layout.end_id)]
    room = L - len(head) - len(cont) - len(tail)
    if room < 0:
        raise ValueError(f"a continuation of {len(cont)} tokens does not fit a row of {L} slots (with its special "
                         f"tokens): raise the run's row length (masked_lm: task.gen_length; ar2diff: task.buckets)")
    ctx = [int(t) for t in context]
    sep = [] if layout.sep_id is None else [int(layout.sep_id)]
    keep = min(len(ctx), max(room - len(sep), 0))
    kept = ctx[len(ctx) - keep:] if keep else []
    prompt = head + kept + (sep if kept else [])
    ids = prompt + cont + tail
    tokens = np.full(L, layout.pad_id, np.int32)
    tokens[:len(ids)] = ids
    pos = np.arange(L)
    return {"tokens": tokens, "valid": pos < len(ids), "prompt_length": np.int32(len(prompt)),
            "target": (pos >= len(prompt)) & (pos < len(prompt) + len(cont)), "context_cut": len(ctx) - keep}


def stack_rows(rows: Sequence[dict]) -> dict:
    """``pack_pair`` rows -> arrays ``[N, L]`` / ``[N]`` (``context_cut`` left out)."""
    return {k: np.stack([r[k] for r in rows]) for k in ("tokens", "valid", "prompt_length", "target")}


def elbo_masks(target: np.ndarray, num_samples: int, seed: int, request_id: int) -> tuple[np.ndarray, np.ndarray]:
    """LLaDA's draw for one request: ``target [L] bool`` -> ``masked [S, L] bool`` and ``weight [S]`` = n / l.

    Sample s: ``l ~ U{1..n}`` (n = the continuation's length), then ``l`` of its positions uniformly without
    replacement; the generator is ``default_rng([seed, request_id])``."""
    pos = np.flatnonzero(target)
    n = len(pos)
    if n == 0:
        raise ValueError("a row with no continuation slot")
    gen = np.random.default_rng([int(seed), int(request_id)])
    masked = np.zeros((int(num_samples), len(target)), bool)
    weight = np.zeros(int(num_samples), np.float64)
    for s in range(int(num_samples)):
        l = int(gen.integers(1, n + 1))
        masked[s, gen.choice(pos, size=l, replace=False)] = True
        weight[s] = n / l
    return masked, weight


def elbo_estimate(log_probs: np.ndarray, masked: np.ndarray, weight: np.ndarray) -> float:
    """``log_probs [S, L]`` (log p of each row's token given sample s's masked input), ``masked [S, L]``,
    ``weight [S]`` -> the Monte-Carlo ELBO: mean_s weight_s * sum_{masked} log_probs."""
    per_sample = np.sum(np.where(masked, log_probs, 0.0), axis=-1) * weight
    return float(np.mean(per_sample))


def ar_log_likelihood(log_probs: np.ndarray, target: np.ndarray) -> float:
    """``log_probs [L]`` = log p(x_i | x_<i) at each slot, ``target [L] bool`` -> the sum over the continuation."""
    return float(np.sum(np.where(target, log_probs, 0.0)))


def is_greedy(argmax_ids: np.ndarray, tokens: np.ndarray, target: np.ndarray) -> bool:
    """Whether ``argmax_ids [L]`` equals ``tokens [L]`` at every continuation slot ``target [L]``."""
    return bool(np.all((argmax_ids == tokens) | ~target))


def rolling_windows(ids: Sequence[int], window: int, context: int) -> list[tuple[list[int], list[int]]]:
    """A text's ids -> (context ids, continuation ids) pairs: disjoint continuation windows of at most
    ``window`` tokens covering ``ids`` in order, each with the (at most ``context``) tokens just before it."""
    ids = [int(i) for i in ids]
    if window < 1:
        raise ValueError(f"window={window}: need >= 1 token per window")
    return [(ids[max(0, a - int(context)):a], ids[a:a + window]) for a in range(0, len(ids), window)]


def truncate_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` cut before the first occurrence of any of ``until`` (the earliest one wins)."""
    cut = len(text)
    for stop in until:
        if stop:
            i = text.find(stop)
            if i >= 0:
                cut = min(cut, i)
    return text[:cut]


def mc_standard_error(values: Sequence[float]) -> dict:
    """Estimates of one quantity over seeds -> ``{"mean", "std", "stderr" (std / sqrt(k), ddof 1), "num_seeds"}``."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        raise ValueError(f"a standard error needs >= 2 seeds, got {v.size}")
    std = float(np.std(v, ddof=1))
    return {"mean": float(np.mean(v)), "std": std, "stderr": std / float(np.sqrt(v.size)), "num_seeds": int(v.size)}
