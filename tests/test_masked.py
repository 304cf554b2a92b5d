"""Tests for diffjax/diffusion/masked.py: absorbing corruption, MD4 ELBO, RDM loss (papers.md 002)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import masked, schedules

P = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.0], np.float32)  # token 0 = [MASK] (prob 0), token 5 never used
MASK = 0
V = P.shape[0]
H = float(-np.sum(P[P > 0] * np.log(P[P > 0])))
L, N_PROMPT = 8, 3
N_CORR = L - N_PROMPT


def marginal_logits_fn(x, t):
    """Denoiser that outputs the true i.i.d. marginal p; its [MASK] logit is garbage that must be excluded."""
    logits = jnp.log(jnp.asarray(P).at[MASK].set(1.0))  # log 1 = 0 at mask id, others log p (-inf at id 5)
    logits = jnp.where(jnp.isinf(logits), -1e9, logits)
    return jnp.broadcast_to(logits, x.shape + (V,))


def sample_x0(rng, batch):
    return jax.random.categorical(rng, jnp.log(jnp.asarray(P) + 1e-30), shape=(batch, L)).astype(jnp.int32)


def prompt_corruptible(batch):
    return jnp.broadcast_to(jnp.arange(L) >= N_PROMPT, (batch, L))


# ----------------------------------------------------------------------------- corruption


def test_absorbing_corrupt_rate_and_protected_positions():
    B = 3000
    x0 = sample_x0(jax.random.PRNGKey(1), B)
    probs = jnp.tile(jnp.array([0.1, 0.5, 0.9]), B // 3)
    corr = prompt_corruptible(B)
    valid = jnp.arange(L)[None, :] < jnp.tile(jnp.array([8, 6, 7]), B // 3)[:, None]
    x_t, m = masked.absorbing_corrupt(x0, probs, jax.random.PRNGKey(2), mask_id=MASK, corruptible=corr, valid=valid)
    x_t, m, x0 = map(np.asarray, (x_t, m, x0))
    can = np.asarray(corr & valid)
    assert not m[~can].any()
    np.testing.assert_array_equal(x_t[~m], x0[~m])
    assert (x_t[m] == MASK).all()
    np.testing.assert_array_equal(m, x_t == MASK)  # x0 never holds MASK
    probs = np.asarray(probs)
    for p in (0.1, 0.5, 0.9):
        sel = (probs == p)[:, None] & can
        n = sel.sum()
        assert abs(m[sel].mean() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_elbo_masks_with_rate_one_minus_alpha():
    B = 4000
    x0 = sample_x0(jax.random.PRNGKey(3), B)
    kinds = (("linear", {}), ("cosine", {}), ("polynomial", {"power": 2.0}))
    ts = jnp.array([0.2, 0.7])

    @jax.jit
    def rates(t):  # [len(kinds)] masked fraction at a fixed t, for every schedule kind
        return jnp.stack([masked.masked_diffusion_elbo(marginal_logits_fn, x0, jax.random.PRNGKey(4), mask_id=MASK,
                                                       schedule=k, schedule_kwargs=kw, t=jnp.full((B,), t),
                                                       corruptible=prompt_corruptible(B))[1]["mask_rate"]
                          for k, kw in kinds])

    got = np.asarray(jax.vmap(rates)(ts))
    for j, (kind, kw) in enumerate(kinds):
        for i, t in enumerate(np.asarray(ts)):
            q = 1.0 - float(schedules.masking_alpha(t, kind, **kw))
            assert abs(got[i, j] - q) < 4 * math.sqrt(q * (1 - q) / (B * N_CORR)), (kind, t, got[i, j], q)


def test_corrupt_count_is_exact_and_uniform():
    B = 4000
    x0 = sample_x0(jax.random.PRNGKey(5), B)
    corr = prompt_corruptible(B)
    counts = jnp.tile(jnp.array([0, 2, 5, 9]), B // 4)  # 9 > 5 corruptible: clipped to 5
    x_t, m = masked.absorbing_corrupt_count(x0, counts, jax.random.PRNGKey(6), mask_id=MASK, corruptible=corr)
    m = np.asarray(m)
    np.testing.assert_array_equal(m.sum(1), np.minimum(np.asarray(counts), N_CORR))
    assert not m[:, :N_PROMPT].any()
    np.testing.assert_array_equal(np.asarray(x_t) == MASK, m)
    freq = m[np.asarray(counts) == 2][:, N_PROMPT:].mean(0)  # each position masked w.p. 2/5
    np.testing.assert_allclose(freq, 0.4, atol=4 * math.sqrt(0.24 / (B // 4)))


# ----------------------------------------------------------------------------- MD4 ELBO


def test_elbo_of_true_marginal_is_n_times_entropy():
    B, t_min = 64, 1e-3
    kinds = ("linear", "cosine")

    def losses(rng):
        r1, r2 = jax.random.split(rng)
        x0 = sample_x0(r1, B)
        return jnp.stack([masked.masked_diffusion_elbo(marginal_logits_fn, x0, r2, mask_id=MASK, schedule=k,
                                                       corruptible=prompt_corruptible(B), t_min=t_min)[0]
                          for k in kinds])

    vals = np.asarray(jax.jit(jax.vmap(losses))(jax.random.split(jax.random.PRNGKey(0), 256)), np.float64)
    for j, kind in enumerate(kinds):
        a = schedules.masking_alpha(jnp.array([t_min, 1.0]), kind)
        expected = N_CORR * H * float(a[0] - a[1]) / (1 - t_min)
        mean, se = vals[:, j].mean(), vals[:, j].std(ddof=1) / math.sqrt(len(vals))
        assert se < 0.02 * expected  # the test has power
        assert abs(mean - expected) < 4 * se, (kind, mean, expected, se)


def test_elbo_perfect_denoiser_is_zero_and_wrong_one_is_not():
    B = 16
    x0 = sample_x0(jax.random.PRNGKey(7), B)
    perfect = lambda x, t: 50.0 * jax.nn.one_hot(x0, V)
    loss, _ = masked.masked_diffusion_elbo(perfect, x0, jax.random.PRNGKey(8), mask_id=MASK)
    assert 0.0 <= float(loss) < 1e-6
    wrong = lambda x, t: 50.0 * jax.nn.one_hot((x0 % 4) + 1, V)  # shifted tokens
    assert float(masked.masked_diffusion_elbo(wrong, x0, jax.random.PRNGKey(8), mask_id=MASK)[0]) > 1.0


def test_elbo_gradient_never_reaches_prompt_or_padding():
    B = 8
    x0 = sample_x0(jax.random.PRNGKey(9), B)
    valid = jnp.arange(L)[None, :] < 7  # last position is padding

    def loss(w):  # per-position logits, independent of the input
        fn = lambda x, t: jnp.broadcast_to(w, x.shape + (V,))
        return masked.masked_diffusion_elbo(fn, x0, jax.random.PRNGKey(10), mask_id=MASK, t=jnp.full((B,), 0.9),
                                            corruptible=prompt_corruptible(B), valid=valid)[0]

    g = np.asarray(jax.jit(jax.grad(loss))(jnp.zeros((L, V))))
    assert np.all(g[:N_PROMPT] == 0) and np.all(g[7] == 0)
    assert np.all(np.abs(g[N_PROMPT:7]).sum(-1) > 0)
    assert np.all(g[:, MASK] == 0)  # the [MASK] logit is excluded


def test_elbo_timestep_sweep_vmap_equals_loop():
    B = 8
    x0 = sample_x0(jax.random.PRNGKey(11), B)
    rng = jax.random.PRNGKey(12)
    f = lambda t: masked.masked_diffusion_elbo(marginal_logits_fn, x0, rng, mask_id=MASK, schedule="cosine",
                                               t=jnp.full((B,), t))[0]
    ts = jnp.array([0.1, 0.4, 0.8])
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(ts), [f(t) for t in ts], rtol=1e-5)


# ----------------------------------------------------------------------------- RDM (paper 002)


def test_rdm_expectation_matches_closed_form():
    B, T = 64, 10
    weightings = ("reciprocal", "constant", "linear")

    def losses(rng):  # the three weightings share one compile
        r1, r2 = jax.random.split(rng)
        x0 = sample_x0(r1, B)
        return jnp.stack([masked.rdm_loss(marginal_logits_fn, x0, r2, mask_id=MASK, num_timesteps=T, weighting=w,
                                          corruptible=prompt_corruptible(B))[0] for w in weightings])

    vals = np.asarray(jax.jit(jax.vmap(losses))(jax.random.split(jax.random.PRNGKey(1), 256)), np.float64)
    ts = np.arange(1, T + 1)
    for j, weighting in enumerate(weightings):
        lam = {"reciprocal": 1 / ts, "constant": np.ones(T), "linear": 1 - (ts - 1) / T}[weighting]
        np.testing.assert_allclose(masked.rdm_weight(jnp.asarray(ts), T, weighting), lam, rtol=1e-6)
        expected = N_CORR * H * np.mean(lam * ts / T)
        if weighting == "reciprocal":
            assert abs(expected - N_CORR * H / T) < 1e-12  # T * loss is the ELBO (= n H)
        mean, se = vals[:, j].mean(), vals[:, j].std(ddof=1) / math.sqrt(len(vals))
        assert se < 0.02 * expected
        assert abs(mean - expected) < 4 * se, (weighting, mean, expected, se)


def test_rdm_ratio_variant_counts_and_expectation():
    B, rmin = 64, 0.05

    def loss(rng):
        r1, r2 = jax.random.split(rng)
        x0 = sample_x0(r1, B)
        kw = dict(mask_id=MASK, time_sampling="ratio", corruptible=prompt_corruptible(B))
        _, aux = masked.rdm_loss(marginal_logits_fn, x0, r2, t=jnp.full((B,), 0.3), **kw)
        return masked.rdm_loss(marginal_logits_fn, x0, r2, min_ratio=rmin, **kw)[0], aux["mask_rate"]

    vals, rate = jax.jit(jax.vmap(loss))(jax.random.split(jax.random.PRNGKey(2), 256))
    np.testing.assert_allclose(rate, 2 / 5, rtol=1e-6)  # exactly ceil(0.3 * 5) = 2 of 5 masked, every draw
    vals = np.asarray(vals, np.float64)
    mean, se = vals.mean(), vals.std(ddof=1) / math.sqrt(len(vals))
    n = N_CORR
    e = sum(k * math.log((k / n) / max((k - 1) / n, rmin)) for k in range(1, n + 1) if k / n > rmin) / (1 - rmin)
    expected = H * e
    assert se < 0.02 * expected
    assert abs(mean - expected) < 4 * se, (mean, expected, se)


def test_rdm_perfect_denoiser_is_zero():
    x0 = sample_x0(jax.random.PRNGKey(15), 16)
    perfect = lambda x, t: 50.0 * jax.nn.one_hot(x0, V)
    for ts in ("discrete", "ratio"):
        assert 0.0 <= float(masked.rdm_loss(perfect, x0, jax.random.PRNGKey(16), mask_id=MASK, time_sampling=ts)[0]) < 1e-6


def test_rdm_normalisations_on_fully_masked_input():
    """At t = T every corruptible token is masked, so S_b = sum_n -log p(x0_n) exactly."""
    B, T = 6, 10
    x0 = sample_x0(jax.random.PRNGKey(17), B)
    lengths = jnp.array([8, 7, 6, 5, 4, 3])
    valid = jnp.arange(L)[None, :] < lengths[:, None]
    can = np.asarray(prompt_corruptible(B) & valid)
    nll = -np.log(P[np.asarray(x0)])
    S = np.where(can, nll, 0).sum(1)
    n = can.sum(1)
    want = {"sequence": S.mean(), "token": np.mean(S / np.maximum(n, 1)), "batch_token": S.sum() / n.sum()}
    for norm, w in want.items():
        loss, aux = masked.rdm_loss(marginal_logits_fn, x0, jax.random.PRNGKey(18), mask_id=MASK, num_timesteps=T,
                                    weighting="constant", t=jnp.full((B,), T), corruptible=prompt_corruptible(B),
                                    valid=valid, normalize=norm)
        assert float(loss) == pytest.approx(w, rel=1e-5), norm
        assert float(aux["mask_rate"]) == 1.0
    # reciprocal weight at t = T scales by 1/T
    loss, _ = masked.rdm_loss(marginal_logits_fn, x0, jax.random.PRNGKey(18), mask_id=MASK, num_timesteps=T,
                              t=jnp.full((B,), T), corruptible=prompt_corruptible(B), valid=valid)
    assert float(loss) == pytest.approx(S.mean() / T, rel=1e-5)


def test_rdm_jit_grad_and_rng_sensitivity():
    B = 8
    x0 = sample_x0(jax.random.PRNGKey(19), B)

    def loss(w, rng):
        fn = lambda x, t: w[x] + t[:, None, None]
        return masked.rdm_loss(fn, x0, rng, mask_id=MASK, corruptible=prompt_corruptible(B))[0]

    w = jax.random.normal(jax.random.PRNGKey(20), (V, V))
    f = jax.jit(jax.value_and_grad(loss))
    (l1, g1), (l2, _) = f(w, jax.random.PRNGKey(0)), f(w, jax.random.PRNGKey(1))
    assert np.isfinite(np.asarray(g1)).all() and float(jnp.abs(g1).sum()) > 0
    assert float(l1) != float(l2)  # the rng is used
    np.testing.assert_allclose(l1, loss(w, jax.random.PRNGKey(0)), rtol=1e-5)


def test_errors_are_actionable():
    x0 = sample_x0(jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="normalize"):
        masked.rdm_loss(marginal_logits_fn, x0, jax.random.PRNGKey(0), mask_id=MASK, normalize="mean")
    with pytest.raises(ValueError, match="weighting"):
        masked.rdm_loss(marginal_logits_fn, x0, jax.random.PRNGKey(0), mask_id=MASK, weighting="cubic")
    with pytest.raises(ValueError, match="ratio"):
        masked.rdm_loss(marginal_logits_fn, x0, jax.random.PRNGKey(0), mask_id=MASK, time_sampling="ratio",
                        weighting="linear")
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        masked.absorbing_corrupt(x0[0], 0.5, jax.random.PRNGKey(0), mask_id=MASK)


# ----------------------------------------------------------------------------- what the denoiser receives

W_REC = jax.random.normal(jax.random.PRNGKey(60), (V, V))
POS_REC = jax.random.normal(jax.random.PRNGKey(61), (L, V))


def _recording_logits_fn(calls):
    """Logits that depend on the input tokens and position; records (x, t) of every call."""
    def fn(x, t):
        calls.append((np.asarray(x), np.asarray(t)))
        return W_REC[x] + POS_REC[None] + t[:, None, None]

    return fn


def _check_received_x_t(x_in, x0, corr, valid=None):
    """x_in is the corrupted x_t: each position is x0 or [MASK], [MASK] only where corruptible & valid."""
    x0 = np.asarray(x0)
    can = np.asarray(corr) if valid is None else np.asarray(corr) & np.asarray(valid)
    is_mask = x_in == MASK
    np.testing.assert_array_equal(x_in[~is_mask], x0[~is_mask])
    assert not is_mask[~can].any()  # prompt / padding untouched
    np.testing.assert_array_equal(x_in[~can], x0[~can])
    assert is_mask.any() and (~is_mask & can).any()  # really corrupted, not x0 and not all-[MASK]
    return is_mask


def _nll_sum(x_in, t, x0, sel):
    logits = np.asarray(W_REC)[x_in] + np.asarray(POS_REC)[None] + t[:, None, None]
    logits[..., MASK] = -np.inf
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, np.asarray(x0)[..., None], -1)[..., 0]
    return np.where(sel, nll, 0.0).sum(-1)


def test_elbo_and_rdm_hand_the_denoiser_x_t_not_x0():
    B = 16
    x0 = sample_x0(jax.random.PRNGKey(62), B)
    x0 = jnp.where(x0 == MASK, 1, x0)
    corr = prompt_corruptible(B)
    valid = jnp.arange(L)[None, :] < jnp.tile(jnp.array([8, 7]), B // 2)[:, None]
    # continuous-time ELBO at t = 0.5 (linear: w = 1/t = 2)
    calls = []
    loss, _ = masked.masked_diffusion_elbo(_recording_logits_fn(calls), x0, jax.random.PRNGKey(63), mask_id=MASK,
                                           corruptible=corr, valid=valid, t=jnp.full((B,), 0.5))
    (x_in, t_in), = calls
    is_mask = _check_received_x_t(x_in, x0, corr, valid)
    np.testing.assert_allclose(t_in, 0.5)
    np.testing.assert_allclose(float(loss), (2.0 * _nll_sum(x_in, t_in, x0, is_mask)).mean(), rtol=1e-5)
    # RDM, discrete t = 25 of T = 50 (level 0.5, reciprocal weight 1/25)
    calls = []
    loss, _ = masked.rdm_loss(_recording_logits_fn(calls), x0, jax.random.PRNGKey(64), mask_id=MASK, num_timesteps=50,
                              corruptible=corr, valid=valid, t=jnp.full((B,), 25))
    (x_in, t_in), = calls
    is_mask = _check_received_x_t(x_in, x0, corr, valid)
    np.testing.assert_allclose(t_in, 0.5)
    np.testing.assert_allclose(float(loss), (_nll_sum(x_in, t_in, x0, is_mask) / 25).mean(), rtol=1e-5)
    # RDM ratio variant: exactly ceil(r n_b) masked positions
    calls = []
    masked.rdm_loss(_recording_logits_fn(calls), x0, jax.random.PRNGKey(65), mask_id=MASK, time_sampling="ratio",
                    corruptible=corr, valid=valid, t=jnp.full((B,), 0.4))
    (x_in, _), = calls
    is_mask = _check_received_x_t(x_in, x0, corr, valid)
    n = np.asarray(corr & valid).sum(1)
    np.testing.assert_array_equal(is_mask.sum(1), np.ceil(0.4 * n).astype(int))
