"""Tests for diffjax/diffusion/discrete_sampling.py: top-k unmasking (paper 002), ancestral unmasking (MD4),
iterative refinement (paper 001)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import discrete_sampling as ds
from diffjax.diffusion import schedules

V, MASK, L, N_PROMPT = 9, 8, 12, 3  # the [MASK] id is inside the model's vocabulary
LENGTHS = np.array([12, 10, 7, 4])  # per-example valid length (prompt + target)


def setup(reps=1):
    B = len(LENGTHS) * reps
    x0 = jax.random.randint(jax.random.PRNGKey(0), (B, L), 0, MASK).astype(jnp.int32)
    corr = jnp.broadcast_to(jnp.arange(L) >= N_PROMPT, (B, L))
    valid = jnp.arange(L)[None, :] < jnp.tile(jnp.asarray(LENGTHS), reps)[:, None]
    return x0, corr, valid, np.asarray(corr & valid)


W = jax.random.normal(jax.random.PRNGKey(1), (V, V))
POS = jax.random.normal(jax.random.PRNGKey(2), (L, V))


def random_fn(x, t):
    """Input-dependent logits whose [MASK] column is the largest: decoding it would be a bug."""
    logits = W[x] + POS[None] + t[:, None, None]
    return logits.at[..., MASK].set(10.0)


# distinct per-position confidence, input-independent: position j predicts token j % 8 with logit C[j]
C = jnp.asarray(np.random.RandomState(0).permutation(L) * 0.5 + 1.0, jnp.float32)


def confidence_fn(x, t):
    logits = C[:, None] * jax.nn.one_hot(jnp.arange(L) % MASK, V)
    return jnp.broadcast_to(logits, x.shape + (V,))


def oracle_fn(x0):
    return lambda x, t: 50.0 * jax.nn.one_hot(x0, V)


# ----------------------------------------------------------------------------- top-k (paper 002)


def test_topk_unmasks_scheduled_count_and_keeps_prompt():
    x0, corr, valid, gen = setup()
    N = 5
    combos = [(r, g, "linear") for r in (True, False) for g in (True, False)] + [(True, True, "cosine"),
                                                                                 (False, False, "cosine")]

    @jax.jit
    def run(rng):
        return [ds.topk_unmask_sample(random_fn, x0, rng, mask_id=MASK, num_steps=N, corruptible=corr, valid=valid,
                                      remask=r, greedy=g, temperature=0.7, unmask_schedule=u, return_history=True)
                for r, g, u in combos]

    n_gen = gen.sum(1)
    for (remask, greedy, sched), (out, hist) in zip(combos, run(jax.random.PRNGKey(3))):
        out, hist = np.asarray(out), np.asarray(hist)
        assert hist.shape == (N,) + x0.shape
        np.testing.assert_array_equal(out, hist[-1])
        for i in range(1, N + 1):
            h = hist[i - 1]
            if sched == "linear":
                k = -(-(n_gen * i) // N)  # k_i = ceil(L_valid i / N): the authors keep int(L (t-1)/T) masked
            else:
                k = n_gen - np.floor(n_gen * np.cos(np.pi / 2 * i / N) + 1e-6).astype(int)
            np.testing.assert_array_equal(((h != MASK) & gen).sum(1), k, err_msg=f"{sched} step {i}")
            np.testing.assert_array_equal(h[~gen], np.asarray(x0)[~gen])  # prompt and padding untouched
            if not remask and i > 1:  # decoded tokens are frozen
                prev = hist[i - 2]
                np.testing.assert_array_equal(h[prev != MASK], prev[prev != MASK])
        assert not (out[gen] == MASK).any()


@pytest.mark.parametrize("remask", [True, False])
def test_topk_unmasks_the_most_confident_positions(remask):
    x0, corr, valid, gen = setup()
    N = 4
    _, hist = jax.jit(lambda rng: ds.topk_unmask_sample(confidence_fn, x0, rng, mask_id=MASK, num_steps=N,
                                                        corruptible=corr, valid=valid, remask=remask,
                                                        return_history=True))(jax.random.PRNGKey(4))
    hist, c = np.asarray(hist), np.asarray(C)
    for b in range(len(LENGTHS)):
        pos = np.where(gen[b])[0]
        by_conf = pos[np.argsort(-c[pos])]
        for i in range(1, N + 1):
            k = -(-(len(pos) * i) // N)
            unmasked = np.where((hist[i - 1, b] != MASK) & gen[b])[0]
            np.testing.assert_array_equal(unmasked, np.sort(by_conf[:k]))
            np.testing.assert_array_equal(hist[i - 1, b, by_conf[:k]], by_conf[:k] % MASK)


def test_oracle_denoiser_recovers_x0_with_every_sampler():
    x0, corr, valid, gen = setup()

    @jax.jit
    def run(rng):
        r1, r2, r3 = jax.random.split(rng, 3)
        f = oracle_fn(x0)
        a = ds.topk_unmask_sample(f, x0, r1, mask_id=MASK, num_steps=3, corruptible=corr, valid=valid, greedy=False)
        b = ds.ancestral_unmask_sample(f, x0, r2, mask_id=MASK, num_steps=3, corruptible=corr, valid=valid)
        f3 = oracle_fn(jnp.repeat(x0, 3, axis=0))  # chains are tiled example-major: [B * 3, L]
        c, _ = ds.iterative_refinement_sample(f3, x0, r3, vocab_size=V, num_steps=2, num_samples=3,
                                              corruptible=corr, valid=valid)
        return a, b, c

    for out in run(jax.random.PRNGKey(5)):
        np.testing.assert_array_equal(out, x0)


# ----------------------------------------------------------------------------- ancestral (MD4)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ancestral_unmask_rate_follows_schedule(kind):
    reps, N = 64, 4
    x0, corr, valid, gen = setup(reps)
    out, hist = jax.jit(lambda rng: ds.ancestral_unmask_sample(random_fn, x0, rng, mask_id=MASK, num_steps=N,
                                                               schedule=kind, corruptible=corr, valid=valid,
                                                               return_history=True))(jax.random.PRNGKey(6))
    hist = np.asarray(hist)
    n = gen.sum()
    for i in range(1, N + 1):
        h = hist[i - 1]
        np.testing.assert_array_equal(h[~gen], np.asarray(x0)[~gen])
        frac = ((h != MASK) & gen).sum() / n
        a = float(schedules.masking_alpha(1.0 - i / N, kind))
        if i < N:
            # per-example counts are dependent within a row; 4 sigma of the token-level binomial with slack
            assert abs(frac - a) < 5 * math.sqrt(max(a * (1 - a), 1e-3) / n), (i, frac, a)
            if i > 1:  # unmasked tokens never change
                prev = hist[i - 2]
                np.testing.assert_array_equal(h[prev != MASK], prev[prev != MASK])
        else:
            assert frac == 1.0


def test_ancestral_samples_model_marginal_at_temperature():
    reps = 128
    x0, corr, valid, gen = setup(reps)
    p = np.array([0.05, 0.1, 0.3, 0.15, 0.05, 0.2, 0.1, 0.05, 0.0])
    logits = jnp.log(jnp.asarray(p).at[MASK].set(1.0))  # mask logit 0 > others: must be excluded
    fn = lambda x, t: jnp.broadcast_to(logits, x.shape + (V,))

    @jax.jit
    def run(rng):
        r1, r2 = jax.random.split(rng)
        return (ds.ancestral_unmask_sample(fn, x0, r1, mask_id=MASK, num_steps=3, corruptible=corr, valid=valid,
                                           temperature=0.5),
                ds.ancestral_unmask_sample(fn, x0, r2, mask_id=MASK, num_steps=3, corruptible=corr, valid=valid,
                                           greedy=True))

    sampled, greedy = map(np.asarray, run(jax.random.PRNGKey(7)))
    toks = sampled[gen]
    q = p ** 2 / np.sum(p ** 2)  # softmax(log p / 0.5)
    freq = np.bincount(toks, minlength=V) / len(toks)
    np.testing.assert_allclose(freq, q, atol=4 * math.sqrt(0.25 / len(toks)))
    assert (greedy[gen] == np.argmax(p)).all()


# ----------------------------------------------------------------------------- iterative refinement (paper 001)


def test_refinement_keeps_highest_logprob_chain():
    x0, corr, valid, gen = setup()
    p = np.array([0.05, 0.1, 0.3, 0.15, 0.05, 0.2, 0.1, 0.05, 0.0], np.float32)
    logp = jnp.log(jnp.asarray(p) + 1e-12)
    marginal = lambda x, t: jnp.broadcast_to(logp, x.shape + (V,))
    S = 6

    @jax.jit
    def run(rng):
        r1, r2, r3 = jax.random.split(rng, 3)
        a = ds.iterative_refinement_sample(marginal, x0, r1, vocab_size=V, num_steps=3, num_samples=S,
                                           temperature=1.0, corruptible=corr, valid=valid, return_all=True)
        b = ds.iterative_refinement_sample(random_fn, x0, r2, vocab_size=MASK, num_steps=2, num_samples=S,
                                           temperature=1.0, corruptible=corr, valid=valid, score="rescore",
                                           return_all=True)
        c = ds.iterative_refinement_sample(marginal, x0, r3, vocab_size=MASK, num_steps=2, num_samples=S,
                                           greedy=True, corruptible=corr, valid=valid, return_all=True)
        return a, b, c

    (tok, sc, all_tok, all_sc), (tok_b, sc_b, all_tok_b, all_sc_b), c = jax.tree.map(np.asarray,
                                                                                    run(jax.random.PRNGKey(8)))
    assert all_tok.shape == (len(LENGTHS), S, L) and all_sc.shape == (len(LENGTHS), S)
    # "last_step" score = sum over generated positions of log p(token) under the distribution it was drawn from
    want = np.where(gen[:, None], np.log(p + 1e-12)[all_tok], 0.0).sum(-1)
    np.testing.assert_allclose(all_sc, want, rtol=1e-5)
    np.testing.assert_allclose(sc, all_sc.max(1))
    np.testing.assert_array_equal(tok, all_tok[np.arange(len(LENGTHS)), all_sc.argmax(1)])
    assert len({tuple(r) for r in all_tok[0]}) > 1  # chains differ
    for t in (all_tok, all_tok_b):  # prompt and padding kept
        fixed = np.broadcast_to(~gen[:, None], t.shape)
        np.testing.assert_array_equal(t[fixed], np.broadcast_to(np.asarray(x0)[:, None], t.shape)[fixed])
    # "rescore" = sum_n log softmax(f(y))[y] of one extra pass
    lp = jax.nn.log_softmax(random_fn(jnp.asarray(all_tok_b.reshape(-1, L)), jnp.zeros(len(LENGTHS) * S)), -1)
    want_b = np.take_along_axis(np.asarray(lp), all_tok_b.reshape(-1, L)[..., None], -1)[..., 0].reshape(-1, S, L)
    np.testing.assert_allclose(all_sc_b, np.where(gen[:, None], want_b, 0).sum(-1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sc_b, all_sc_b.max(1))
    # greedy: every chain is the argmax at generated positions
    all_tok_c = c[2]
    want_c = np.where(gen[:, None], np.argmax(p), np.asarray(x0)[:, None])
    np.testing.assert_array_equal(all_tok_c, np.broadcast_to(want_c, all_tok_c.shape))


def test_vmap_over_rng_and_errors():
    x0, corr, valid, gen = setup()
    f = lambda rng: ds.topk_unmask_sample(random_fn, x0, rng, mask_id=MASK, num_steps=3, corruptible=corr,
                                          valid=valid, greedy=False)
    rngs = jax.random.split(jax.random.PRNGKey(9), 3)
    batched = np.asarray(jax.jit(jax.vmap(f))(rngs))
    assert batched.shape == (3,) + x0.shape
    assert not (batched[0] == batched[1]).all()  # each rng its own draw
    assert not (batched[:, gen] == MASK).any()
    np.testing.assert_array_equal(batched[:, ~gen], np.broadcast_to(np.asarray(x0)[~gen], (3, (~gen).sum())))
    with pytest.raises(ValueError, match="num_steps"):
        ds.topk_unmask_sample(random_fn, x0, rngs[0], mask_id=MASK, num_steps=0)
    with pytest.raises(ValueError, match="score"):
        ds.iterative_refinement_sample(random_fn, x0, rngs[0], vocab_size=V, score="best")


# ----------------------------------------------------------------------------- decoded tokens are never rewritten

W_SHIFT = jax.random.normal(jax.random.PRNGKey(20), (V, V))


def shifting_fn(x, t):
    """Input-dependent logits whose argmax at a decoded position is NOT the token there: position j with token
    v strongly predicts (v + 1 + j) % MASK, plus neighbour-dependent noise. Rewriting a decoded token shows."""
    v = jnp.arange(V)
    target = (x[..., None] + 1 + jnp.arange(L)[None, :, None]) % MASK  # [B, L, 1]
    logits = 3.0 * (v == target) + W_SHIFT[jnp.roll(x, 1, axis=1)] + POS[None] + 0.1 * t[:, None, None]
    return logits.at[..., MASK].set(20.0)  # [MASK] must be excluded


def _topk_reference(fn, x_init, gen, N, remask):
    """The authors' reparameterised decoding (greedy, linear schedule) as a numpy loop: the top-k_i positions
    by the current prediction's log-prob stay / become unmasked, k_i = L - int(L (N - i) / N) = ceil(L i / N);
    a kept decoded token is never rewritten."""
    x = np.where(gen, MASK, np.asarray(x_init)).astype(np.int32)
    n_gen = gen.sum(1)
    hist = []
    for i in range(1, N + 1):
        t = np.full(x.shape[0], 1.0 - (i - 1) / N, np.float32)
        logits = np.asarray(fn(jnp.asarray(x), jnp.asarray(t)), np.float64)
        logits[..., MASK] = -np.inf
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        tok = logits.argmax(-1)
        score = np.take_along_axis(logp, tok[..., None], -1)[..., 0]
        k = n_gen - (n_gen * (N - i)) // N
        new = x.copy()
        for b in range(x.shape[0]):
            decoded = gen[b] & (x[b] != MASK)
            cand = np.where(gen[b] if remask else gen[b] & ~decoded)[0]
            need = k[b] if remask else k[b] - decoded.sum()
            chosen = cand[np.argsort(-score[b, cand], kind="stable")[:need]]
            if remask:
                new[b, gen[b]] = MASK
                new[b, chosen] = np.where(decoded[chosen], x[b, chosen], tok[b, chosen])
            else:
                new[b, chosen] = tok[b, chosen]
        x = new
        hist.append(x.copy())
    return np.stack(hist)


@pytest.mark.parametrize("remask", [True, False])
def test_topk_matches_reference_and_never_rewrites_decoded_tokens(remask):
    x0, corr, valid, gen = setup()
    N = 6
    _, hist = jax.jit(lambda rng: ds.topk_unmask_sample(shifting_fn, x0, rng, mask_id=MASK, num_steps=N,
                                                        corruptible=corr, valid=valid, remask=remask,
                                                        return_history=True))(jax.random.PRNGKey(21))
    hist = np.asarray(hist)
    want = _topk_reference(shifting_fn, x0, gen, N, remask)
    np.testing.assert_array_equal(hist, want)
    rewritten_by_old_rule = False
    for i in range(1, N):
        prev, h = hist[i - 1], hist[i]
        kept = gen & (prev != MASK) & (h != MASK)
        np.testing.assert_array_equal(h[kept], prev[kept])  # a decoded token stays or is re-masked, never rewritten
        pred = np.asarray(jnp.argmax(shifting_fn(jnp.asarray(prev), jnp.zeros(len(prev))).at[..., MASK].set(-1e9), -1))
        rewritten_by_old_rule |= bool((pred[kept] != prev[kept]).any())
    assert rewritten_by_old_rule  # the denoiser would have rewritten kept tokens: the test has teeth
    if remask:
        remasked = gen[None] & (hist[:-1] != MASK) & (hist[1:] == MASK)
        assert remasked.any()  # RDM re-masking happens with this denoiser


def test_topk_sampled_never_rewrites_decoded_tokens():
    x0, corr, valid, gen = setup(reps=4)
    N = 5
    _, hist = jax.jit(lambda rng: ds.topk_unmask_sample(shifting_fn, x0, rng, mask_id=MASK, num_steps=N,
                                                        corruptible=corr, valid=valid, greedy=False, temperature=1.5,
                                                        return_history=True))(jax.random.PRNGKey(22))
    hist = np.asarray(hist)
    n_kept = 0
    for i in range(1, N):
        prev, h = hist[i - 1], hist[i]
        kept = gen & (prev != MASK) & (h != MASK)
        n_kept += kept.sum()
        np.testing.assert_array_equal(h[kept], prev[kept])
    assert n_kept > 0
    assert not (hist[-1][gen] == MASK).any()
