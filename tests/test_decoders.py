"""Tests for the decoders added for paper 002's generation (diffjax/diffusion/discrete_sampling.py):
confidence-threshold parallel decoding, semi-autoregressive block decoding, top-p, the linear and
cosine top-k schedules and decode-time scores against the authors' loop, and the properties every decoder must have (prompt untouched,
no [MASK] left, deterministic under a fixed rng)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import discrete_sampling as ds
from diffjax.diffusion.decoders import unmask_sample
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
    return unmask_sample(name, fn, x0, rng, mask_id=MASK, corruptible=corr, valid=valid, **kw, **extra)


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


def _topk_authors_reference(fn, x_init, gen, T, schedule):
    """The authors' generator loop (yegcjs/DiffusionLLM dd_generator ``denoise_step`` + ``_reparam_decoding``,
    strategy "reparam-uncond-deterministic-<schedule>", argmax decoding) as a numpy loop. At step
    cur = 1..T (noise level t = T - cur + 1): rate = 1 - cur / T ("linear", i.e. (t - 1) / T) or
    cos(pi/2 cur / T) ("cosine"); cutoff_len = int(L * rate) positions stay masked, the lowest-scoring
    ones. A kept decoded token is never rewritten and keeps its score; a newly decoded one gets the
    current token and score (``output_scores``); a re-masked one gets score -inf. The linear int() is
    taken in exact integers (the authors' float product can land one below an exact integer).
    Returns (history [T, B, L] of the tokens after every step, output_scores) — the scores ``score_select``
    averages."""
    x = np.where(gen, MASK, np.asarray(x_init)).astype(np.int32)
    out_scores = np.zeros(x.shape, np.float64)
    Lg = gen.sum(1)
    hist = []
    for cur in range(1, T + 1):
        step_t = T - cur + 1
        logits = np.asarray(fn(jnp.asarray(x), jnp.full(len(x), step_t / T, np.float32)), np.float64)
        logits[..., MASK] = -np.inf
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        tok = logp.argmax(-1)
        score = logp.max(-1)
        for b in range(len(x)):
            if schedule == "linear":
                cutoff = (int(Lg[b]) * (T - cur)) // T  # int(L * (1 - cur / T))
            else:
                rate = math.cos(math.pi / 2 * cur / T) if cur < T else 0.0
                cutoff = int(Lg[b] * rate)
            pos = np.where(gen[b])[0]
            order = pos[np.argsort(-score[b, pos], kind="stable")]
            keep, remask = order[:Lg[b] - cutoff], order[Lg[b] - cutoff:]
            was = x[b].copy()
            x[b, remask] = MASK
            out_scores[b, remask] = -np.inf
            new = keep[was[keep] == MASK]  # masked_to_x0: [MASK] before, not among the lowest
            x[b, new] = tok[b, new]
            out_scores[b, new] = score[b, new]
        hist.append(x.copy())
    return np.stack(hist), out_scores


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_topk_matches_authors_loop_tokens_and_decode_time_scores(schedule):
    x0, corr, valid, gen = setup(reps=2)
    T = 7  # generated lengths 9, 7, 4, 1: floor and ceil of L i / T differ
    x, hist, sc = jax.jit(lambda r: ds.topk_unmask_sample(
        shifting_fn, x0, r, mask_id=MASK, num_steps=T, corruptible=corr, valid=valid, unmask_schedule=schedule,
        return_history=True, return_scores=True))(jax.random.PRNGKey(0))
    want_hist, want_sc = _topk_authors_reference(shifting_fn, x0, gen, T, schedule)
    np.testing.assert_array_equal(np.asarray(hist), want_hist)  # every step, not only the end
    np.testing.assert_array_equal(np.asarray(x), want_hist[-1])
    np.testing.assert_allclose(np.asarray(sc)[gen], want_sc[gen], rtol=1e-5, atol=1e-5)
    assert (np.asarray(sc)[~gen] == 0).all() and np.isfinite(want_sc[gen]).all()


def test_linear_schedule_unmasks_ceil_and_decodes_from_the_first_step():
    """n = 10 generated positions, N = 50 steps: the authors unmask ceil(10 i / 50) after step i (one at
    step 1); a floor schedule would unmask nothing in the first 4 steps and differ at 40 of 50 steps (all
    but the 10 steps where 5 divides i)."""
    x0 = jnp.zeros((1, 12), jnp.int32)
    corr = jnp.arange(12)[None] >= 2
    _, hist = ds.topk_unmask_sample(random_fn, x0, jax.random.PRNGKey(0), mask_id=MASK, num_steps=50, corruptible=corr,
                                    return_history=True)
    counts = (np.asarray(hist)[:, 0, 2:] != MASK).sum(-1)
    np.testing.assert_array_equal(counts, [-(-10 * i // 50) for i in range(1, 51)])
    assert counts[0] == 1 and sum(c != 10 * i // 50 for i, c in enumerate(counts, 1)) == 40


@pytest.mark.parametrize("kind", sorted(ALL))
def test_every_decoder_returns_decode_time_scores(kind):
    """scores[n] = log p(token n) under the model call that unmasked it: with an input-independent model that
    is log_softmax(logits)[token]; 0 at positions not generated; tokens unchanged by asking for scores."""
    x0, corr, valid, gen = setup(reps=2)
    logits = jax.random.normal(jax.random.PRNGKey(7), (x0.shape[1], V)).at[:, MASK].set(30.0)
    fn = lambda x, t: jnp.broadcast_to(logits, x.shape + (V,))
    extra = {"return_num_calls": True} if kind in ("threshold",) or kind.startswith("block") else {}
    out = jax.jit(lambda r: _run(kind, fn, x0, corr, valid, r, return_scores=True, **extra))(jax.random.PRNGKey(2))
    plain = jax.jit(lambda r: _run(kind, fn, x0, corr, valid, r, **extra))(jax.random.PRNGKey(2))
    x, sc = np.asarray(out[0]), np.asarray(out[1])
    np.testing.assert_array_equal(x, np.asarray(plain[0] if extra else plain))
    if extra:
        np.testing.assert_array_equal(np.asarray(out[2]), np.asarray(plain[1]))
    lp = np.asarray(jax.nn.log_softmax(logits.at[:, MASK].set(-jnp.inf), -1))
    want = lp[np.arange(x.shape[1])[None], np.where(gen, x, 0)]
    np.testing.assert_allclose(sc[gen], want[gen], rtol=1e-5, atol=1e-5)
    assert (sc[~gen] == 0).all()


def test_top_p_tiny_equals_greedy_and_errors():
    x0, corr, valid, gen = setup()
    g = ds.ancestral_unmask_sample(random_fn, x0, jax.random.PRNGKey(4), mask_id=MASK, num_steps=4, corruptible=corr,
                                   valid=valid, greedy=True)
    s = ds.ancestral_unmask_sample(random_fn, x0, jax.random.PRNGKey(4), mask_id=MASK, num_steps=4, corruptible=corr,
                                   valid=valid, greedy=False, top_p=1e-6, temperature=5.0)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(s))
    with pytest.raises(ValueError, match="unknown decoder"):
        unmask_sample("beam", random_fn, x0, jax.random.PRNGKey(0), mask_id=MASK)
    with pytest.raises(ValueError, match="inner"):
        ds.block_unmask_sample(random_fn, x0, jax.random.PRNGKey(0), mask_id=MASK, inner="block")
