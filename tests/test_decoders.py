"""Tests for the decoders added for paper 002's generation (diffjax/diffusion/discrete_sampling.py):
confidence-threshold parallel decoding, semi-autoregressive block decoding, top-p, the cosine top-k
schedule against the authors' loop, and the properties every decoder must have (prompt untouched,
no [MASK] left, deterministic under a fixed rng)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import discrete_sampling as ds
from tests.test_discrete_sampling import MASK, V, setup, shifting_fn, random_fn

ALL = {
    "topk": dict(num_steps=5),
    "topk_sampled": dict(num_steps=5, greedy=False, temperature=1.3, top_p=0.9),
    "ancestral": dict(num_steps=5, top_p=0.8),
    "threshold": dict(num_steps=6, threshold=0.5),
    "block_topk": dict(num_steps=3, num_blocks=3, inner="topk"),
    "block_threshold": dict(num_steps=4, num_blocks=2, inner="threshold", threshold=0.3),
    "block_ancestral": dict(num_steps=3, num_blocks=2, inner="ancestral", greedy=False),
}


def _run(kind, fn, x0, corr, valid, rng, **extra):
    kw = dict(ALL[kind])
    name = "block" if kind.startswith("block") else kind.split("_")[0]
    return ds.unmask_sample(name, fn, x0, rng, mask_id=MASK, corruptible=corr, valid=valid, **kw, **extra)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_every_decoder_keeps_prompt_leaves_no_mask_and_is_deterministic(kind):
    x0, corr, valid, gen = setup(reps=2)
    run = jax.jit(lambda rng: _run(kind, shifting_fn, x0, corr, valid, rng, return_history=True))
    x, hist = run(jax.random.PRNGKey(3))
    x2, _ = run(jax.random.PRNGKey(3))
    x, hist = np.asarray(x), np.asarray(hist)
    np.testing.assert_array_equal(x, np.asarray(x2))  # fixed rng -> same tokens
    np.testing.assert_array_equal(x[~gen], np.asarray(x0)[~gen])  # prompt / padding untouched ...
    np.testing.assert_array_equal(hist[:, ~gen], np.broadcast_to(np.asarray(x0)[~gen], hist[:, ~gen].shape))  # ... at every step
    assert not (x[gen] == MASK).any()  # no mask left
    assert ((x[gen] >= 0) & (x[gen] < V)).all()
    np.testing.assert_array_equal(hist[-1], x)


def _threshold_reference(fn, x_init, gen, N, thr):
    """Threshold decoding as a numpy loop: unmask masked positions with p(argmax) > thr, and at least
    ceil(R / steps_left) of the most confident; decoded tokens frozen; stop when nothing is masked."""
    x = np.where(gen, MASK, np.asarray(x_init)).astype(np.int32)
    n_gen = np.maximum(gen.sum(1), 1)
    calls = np.zeros(len(x), int)
    for i in range(N):
        still = gen & (x == MASK)
        if not still.any():
            break
        R = still.sum(1)
        logits = np.asarray(fn(jnp.asarray(x), jnp.asarray((R / n_gen).astype(np.float32))), np.float64)
        logits[..., MASK] = -np.inf
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        tok, conf = p.argmax(-1), p.max(-1)
        for b in range(len(x)):
            if R[b] == 0:
                continue
            calls[b] += 1
            cand = np.where(still[b])[0]
            need = -(-R[b] // (N - i))
            top = cand[np.argsort(-conf[b, cand], kind="stable")[:need]]
            sel = set(top) | {j for j in cand if conf[b, j] > thr}
            for j in sel:
                x[b, j] = tok[b, j]
    return x, calls


@pytest.mark.parametrize("thr", [0.0, 0.35, 1.0])
def test_threshold_matches_numpy_loop(thr):
    x0, corr, valid, gen = setup(reps=2)
    N = 6
    x, calls = jax.jit(lambda r: ds.threshold_unmask_sample(shifting_fn, x0, r, mask_id=MASK, num_steps=N, threshold=thr,
                                                            corruptible=corr, valid=valid, return_num_calls=True))(
        jax.random.PRNGKey(0))
    want_x, want_calls = _threshold_reference(shifting_fn, x0, gen, N, thr)
    np.testing.assert_array_equal(np.asarray(x), want_x)
    np.testing.assert_array_equal(np.asarray(calls), want_calls)
    if thr == 0.0:
        assert (want_calls == 1).all()  # everything above 0: one call
    if thr == 1.0:
        assert (want_calls == np.minimum(N, gen.sum(1))).all()


def test_threshold_stops_early_with_a_confident_model():
    x0, corr, valid, gen = setup()
    oracle = lambda x, t: 50.0 * jax.nn.one_hot(x0, V)
    x, hist, calls = ds.threshold_unmask_sample(oracle, x0, jax.random.PRNGKey(0), mask_id=MASK, num_steps=10,
                                                threshold=0.9, corruptible=corr, valid=valid, return_history=True,
                                                return_num_calls=True)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x0))
    assert (np.asarray(calls) == 1).all() and np.asarray(hist).shape == (10,) + x0.shape


def test_block_decodes_left_to_right_and_one_block_equals_inner():
    x0, corr, valid, gen = setup(reps=2)
    nb, S = 3, 2
    _, hist = ds.block_unmask_sample(shifting_fn, x0, jax.random.PRNGKey(1), mask_id=MASK, num_blocks=nb, num_steps=S,
                                     corruptible=corr, valid=valid, return_history=True)
    hist = np.asarray(hist)
    assert hist.shape[0] == nb * S
    n = gen.sum(1, keepdims=True)
    block = np.where(gen, ((np.cumsum(gen, 1) - 1) * nb) // np.maximum(n, 1), -1)
    for b in range(nb):
        end = hist[(b + 1) * S - 1]
        assert not (end[block <= b] == MASK).any()  # blocks up to b are done after their steps
        assert (end[(block > b) & gen] == MASK).all()  # later ones untouched
    one = ds.block_unmask_sample(shifting_fn, x0, jax.random.PRNGKey(1), mask_id=MASK, num_blocks=1, num_steps=4,
                                 corruptible=corr, valid=valid)
    key = jax.random.split(jax.random.PRNGKey(1), 1)[0]
    ref = ds.topk_unmask_sample(shifting_fn, x0, key, mask_id=MASK, num_steps=4, corruptible=corr, valid=valid)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(ref))


def _topk_cosine_reference(fn, x_init, gen, T):
    """The authors' generator loop (yegcjs/DiffusionLLM dd_generator, reparam decoding, greedy, cosine):
    for t = T..1: rate = cos(pi/2 (T - t + 1) / T); cutoff_len = int(L * rate) positions stay masked —
    the lowest-scoring ones — and a kept decoded token is never rewritten."""
    x = np.where(gen, MASK, np.asarray(x_init)).astype(np.int32)
    Lg = gen.sum(1)
    for step_t in range(T, 0, -1):
        logits = np.asarray(fn(jnp.asarray(x), jnp.full(len(x), step_t / T, np.float32)), np.float64)
        logits[..., MASK] = -np.inf
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        tok = logp.argmax(-1)
        score = logp.max(-1)
        for b in range(len(x)):
            rate = math.cos(math.pi / 2 * (T - step_t + 1) / T) if step_t > 1 else 0.0
            cutoff = int(Lg[b] * rate)
            pos = np.where(gen[b])[0]
            order = pos[np.argsort(-score[b, pos], kind="stable")]
            keep, remask = order[:Lg[b] - cutoff], order[Lg[b] - cutoff:]
            was = x[b].copy()
            x[b, remask] = MASK
            x[b, keep] = np.where(was[keep] != MASK, was[keep], tok[b, keep])
    return x


def test_topk_cosine_matches_authors_loop():
    x0, corr, valid, gen = setup(reps=2)
    T = 7
    x = ds.topk_unmask_sample(shifting_fn, x0, jax.random.PRNGKey(0), mask_id=MASK, num_steps=T, corruptible=corr,
                              valid=valid, unmask_schedule="cosine")
    np.testing.assert_array_equal(np.asarray(x), _topk_cosine_reference(shifting_fn, x0, gen, T))


def test_top_p_tiny_equals_greedy_and_errors():
    x0, corr, valid, gen = setup()
    g = ds.ancestral_unmask_sample(random_fn, x0, jax.random.PRNGKey(4), mask_id=MASK, num_steps=4, corruptible=corr,
                                   valid=valid, greedy=True)
    s = ds.ancestral_unmask_sample(random_fn, x0, jax.random.PRNGKey(4), mask_id=MASK, num_steps=4, corruptible=corr,
                                   valid=valid, greedy=False, top_p=1e-6, temperature=5.0)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(s))
    with pytest.raises(ValueError, match="unknown decoder"):
        ds.unmask_sample("beam", random_fn, x0, jax.random.PRNGKey(0), mask_id=MASK)
    with pytest.raises(ValueError, match="inner"):
        ds.block_unmask_sample(random_fn, x0, jax.random.PRNGKey(0), mask_id=MASK, inner="block")
