"""Tests for diffjax/diffusion/uniform.py: uniform-token corruption and the SUNDAE-style unrolled loss (paper 001)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import uniform

V, L, N_PREFIX, PAD = 7, 10, 4, 0


def make_batch(rng, B):
    """[prefix ; target] with the target's last positions PAD (target lengths 3..6 of 6 slots)."""
    x0 = jax.random.randint(rng, (B, L), 1, V)
    tgt_len = 3 + jnp.arange(B) % 4
    pos = jnp.arange(L)[None, :]
    x0 = jnp.where((pos >= N_PREFIX + tgt_len[:, None]), PAD, x0).astype(jnp.int32)
    corruptible = jnp.broadcast_to(pos >= N_PREFIX, (B, L))  # the whole target region, PAD included
    return x0, corruptible


def nll_sum(logits, x0, mask):
    logp = jax.nn.log_softmax(logits, -1)
    nll = -np.take_along_axis(np.asarray(logp), np.asarray(x0)[..., None], -1)[..., 0]
    return np.where(np.asarray(mask), nll, 0.0).sum(-1)


def test_uniform_corrupt_rate_prefix_and_uniformity():
    B = 3000
    x0, corr = make_batch(jax.random.PRNGKey(0), B)
    rates = jnp.tile(jnp.array([0.2, 0.8]), B // 2)
    x_t, rep = uniform.uniform_corrupt(x0, rates, jax.random.PRNGKey(1), vocab_size=V, corruptible=corr)
    x0, x_t, rep, corr, rates = map(np.asarray, (x0, x_t, rep, corr, rates))
    assert not rep[:, :N_PREFIX].any()
    np.testing.assert_array_equal(x_t[~rep], x0[~rep])
    for r in (0.2, 0.8):
        sel = (rates == r)[:, None] & corr
        n = sel.sum()
        assert abs(rep[sel].mean() - r) < 4 * math.sqrt(r * (1 - r) / n)
        q = r * (1 - 1 / V)  # a uniform draw keeps the original token with prob 1/V
        assert abs((x_t != x0)[sel].mean() - q) < 4 * math.sqrt(q * (1 - q) / n)
    freq = np.bincount(x_t[rep], minlength=V) / rep.sum()  # replacements are uniform over all V ids
    np.testing.assert_allclose(freq, 1 / V, atol=4 * math.sqrt((1 / V) * (1 - 1 / V) / rep.sum()))


def _recording_fn(theta, calls):
    def fn(x, t):
        calls.append((np.asarray(x), np.asarray(t)))
        return theta[x]

    return fn


def test_unrolled_loss_matches_hand_computation_and_step2_samples_step1():
    B = 8
    x0, corr = make_batch(jax.random.PRNGKey(2), B)
    perm = jnp.array([3, 5, 1, 6, 0, 2, 4])
    theta = 40.0 * jax.nn.one_hot(perm, V)  # f(x)_n puts all mass on perm[x_n]: step-2 input is deterministic
    calls = []
    loss, aux = uniform.unrolled_denoising_loss(_recording_fn(theta, calls), x0, jax.random.PRNGKey(3),
                                                vocab_size=V, corruptible=corr)
    (x1, t1), (x2, t2) = calls
    np.testing.assert_array_equal(x1[:, :N_PREFIX], np.asarray(x0)[:, :N_PREFIX])  # prefix never corrupted
    np.testing.assert_array_equal(x2[:, :N_PREFIX], np.asarray(x0)[:, :N_PREFIX])
    np.testing.assert_array_equal(x2[:, N_PREFIX:], np.asarray(perm)[x1[:, N_PREFIX:]])  # y' ~ softmax(l^(1))
    np.testing.assert_array_equal(t1, t2)
    assert (x1 != np.asarray(x0)).any()
    l1 = nll_sum(theta[x1], x0, corr).mean()  # summed over target positions incl. PAD, mean over batch
    l2 = nll_sum(theta[x2], x0, corr).mean()
    assert float(aux["loss_step1"]) == pytest.approx(l1, rel=1e-5)
    assert float(aux["loss_step2"]) == pytest.approx(l2, rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * (l1 + l2), rel=1e-5)


def test_gradient_flows_through_both_steps_but_not_through_the_sample():
    B = 8
    x0, corr = make_batch(jax.random.PRNGKey(4), B)
    theta = jax.random.normal(jax.random.PRNGKey(5), (V, V))
    rng = jax.random.PRNGKey(6)
    calls = []
    uniform.unrolled_denoising_loss(_recording_fn(theta, calls), x0, rng, vocab_size=V, corruptible=corr)
    (x1, _), (x2, _) = calls

    def loss(th):
        return uniform.unrolled_denoising_loss(lambda x, t: th[x], x0, rng, vocab_size=V, corruptible=corr)[0]

    def reference(th):  # both steps' inputs held fixed: no path through the step-2 sample
        ce = lambda x: jnp.mean(jnp.sum(jnp.where(corr, -jnp.take_along_axis(
            jax.nn.log_softmax(th[x], -1), x0[..., None], -1)[..., 0], 0.0), -1))
        return 0.5 * (ce(x1) + ce(x2))

    g, g_ref = jax.grad(loss)(theta), jax.grad(reference)(theta)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(g).sum()) > 0

    # d L^(2) / d l^(1) = 0, while d L^(1) / d l^(1) != 0
    def step_losses(logits1):
        n = []

        def fn(x, t):
            n.append(1)
            return logits1 if len(n) == 1 else theta[x]

        _, aux = uniform.unrolled_denoising_loss(fn, x0, rng, vocab_size=V, corruptible=corr)
        return aux["loss_step2"], aux["loss_step1"]

    logits1 = jax.random.normal(jax.random.PRNGKey(7), (B, L, V))
    j2, j1 = jax.jacrev(step_losses)(logits1)
    assert float(jnp.abs(j2).max()) == 0.0
    assert float(jnp.abs(j1).max()) > 0.0


def test_perfect_denoiser_zero_loss_and_unroll_steps():
    B = 8
    x0, corr = make_batch(jax.random.PRNGKey(8), B)
    perfect = lambda x, t: 50.0 * jax.nn.one_hot(x0, V)
    loss, aux = uniform.unrolled_denoising_loss(perfect, x0, jax.random.PRNGKey(9), vocab_size=V, corruptible=corr)
    assert 0.0 <= float(loss) < 1e-6 and float(aux["token_accuracy_step1"]) == 1.0
    theta = jax.random.normal(jax.random.PRNGKey(10), (V, V))
    fn = lambda x, t: theta[x]
    for k in (1, 3):
        loss, aux = uniform.unrolled_denoising_loss(fn, x0, jax.random.PRNGKey(11), vocab_size=V, corruptible=corr,
                                                    num_unroll_steps=k)
        steps = [float(aux[f"loss_step{i}"]) for i in range(1, k + 1)]
        assert f"loss_step{k + 1}" not in aux
        assert float(loss) == pytest.approx(np.mean(steps), rel=1e-6)


def test_normalisations_and_valid_mask():
    B = 8
    x0, corr = make_batch(jax.random.PRNGKey(12), B)
    valid = jnp.arange(L)[None, :] < (L - jnp.arange(B) % 3)[:, None]  # batch padding beyond the target slots
    logp = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(13), (V,)))
    fn = lambda x, t: jnp.broadcast_to(logp, x.shape + (V,))  # input-independent: CE is deterministic
    mask = np.asarray(corr & valid)
    S = np.where(mask, -np.asarray(logp)[np.asarray(x0)], 0.0).sum(-1)
    n = mask.sum(-1)
    want = {"sequence": S.mean(), "token": np.mean(S / n), "batch_token": S.sum() / n.sum()}
    for norm, w in want.items():
        loss, _ = uniform.unrolled_denoising_loss(fn, x0, jax.random.PRNGKey(14), vocab_size=V, corruptible=corr,
                                                  valid=valid, normalize=norm)
        assert float(loss) == pytest.approx(w, rel=1e-5), norm
    with pytest.raises(ValueError, match="normalize"):
        uniform.unrolled_denoising_loss(fn, x0, jax.random.PRNGKey(14), vocab_size=V, normalize="avg")


def test_jit_vmap_and_rate_distribution():
    B = 8
    x0, corr = make_batch(jax.random.PRNGKey(15), B)
    theta = jax.random.normal(jax.random.PRNGKey(16), (V, V))

    def f(rng):
        loss, aux = uniform.unrolled_denoising_loss(lambda x, t: theta[x], x0, rng, vocab_size=V, corruptible=corr)
        return loss, aux["corrupt_rate"]

    rngs = jax.random.split(jax.random.PRNGKey(17), 200)
    losses, rates = jax.jit(jax.vmap(f))(rngs)
    assert np.isfinite(np.asarray(losses)).all()
    rates = np.asarray(rates)
    # r ~ U(0, 1) per example -> E[replaced fraction] = 1/2
    assert abs(rates.mean() - 0.5) < 4 * rates.std(ddof=1) / math.sqrt(len(rates))
    assert len(np.unique(np.asarray(losses))) == len(rngs)


def test_denoiser_receives_corrupted_y_then_the_stop_gradient_sample():
    """Call 1 gets y~ = uniform_corrupt(y, r) (not y); call 2 gets a draw from softmax(l^(1)) at target positions.

    The rng layout is the documented one: split(rng, 1 + K) -> rate, corruption, one key per unrolled sample.
    """
    B = 8
    x0, corr = make_batch(jax.random.PRNGKey(20), B)
    theta = jax.random.normal(jax.random.PRNGKey(21), (V, V))  # f(x)_n = theta[x_n]: input-dependent, stochastic draw
    calls = []
    rng = jax.random.PRNGKey(22)
    uniform.unrolled_denoising_loss(_recording_fn(theta, calls), x0, rng, vocab_size=V, corruptible=corr)
    (x1, t1), (x2, t2) = calls
    keys = jax.random.split(rng, 3)
    rate = jax.random.uniform(keys[0], (B,))
    y_tilde, replaced = uniform.uniform_corrupt(x0, rate, keys[1], vocab_size=V, corruptible=corr)
    np.testing.assert_allclose(t1, rate)
    np.testing.assert_array_equal(x1, y_tilde)
    assert (x1 != np.asarray(x0)).any()  # the corrupted sequence, not the clean one
    draw = jax.random.categorical(keys[2], theta[jnp.asarray(x1)], axis=-1)  # y' ~ softmax(l^(1))
    np.testing.assert_array_equal(x2, np.where(np.asarray(corr), np.asarray(draw), np.asarray(x0)))
    assert (x2 != x1)[np.asarray(corr)].any()
