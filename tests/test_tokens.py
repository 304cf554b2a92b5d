"""Tests for diffjax/diffusion/tokens.py: the one token picker (greedy, temperature, top-k, top-p)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.tokens import choose_tokens, filter_logits

V = 11


def _ref_filter(logits, top_k=None, top_p=None):
    """numpy reference, one row at a time (HF TopK then TopP warper semantics)."""
    out = np.array(logits, np.float64)
    for row in out.reshape(-1, out.shape[-1]):
        if top_k is not None:
            kth = np.sort(row)[::-1][top_k - 1]
            row[row < kth] = -np.inf
        if top_p is not None:
            order = np.argsort(-row, kind="stable")
            p = np.exp(row[order] - row[order][0])
            p /= p.sum()
            before = np.cumsum(p) - p
            drop = order[(before >= top_p) & (np.arange(len(order)) > 0)]
            row[drop] = -np.inf
    return out


LOGITS = np.random.RandomState(0).randn(4, 3, V).astype(np.float32) * 2.0


@pytest.mark.parametrize("top_k,top_p", [(None, None), (1, None), (3, None), (V, None), (None, 0.5), (None, 0.9),
                                         (None, 1.0), (None, 1e-6), (5, 0.7)])
def test_filter_matches_numpy_reference(top_k, top_p):
    got = np.asarray(filter_logits(jnp.asarray(LOGITS), top_k=top_k, top_p=top_p))
    want = _ref_filter(LOGITS, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], rtol=1e-6)
    if top_k is not None and top_p is None:
        assert (np.isfinite(got).sum(-1) == top_k).all()  # no ties in random logits


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.6), (4, 0.8)])
def test_sampling_frequencies_follow_the_filtered_softmax(top_k, top_p):
    row = LOGITS[0, 0]
    n = 20000
    logits = jnp.broadcast_to(jnp.asarray(row), (n, V))
    tok, logp = choose_tokens(logits, jax.random.PRNGKey(1), temperature=0.8, top_k=top_k, top_p=top_p)
    tok = np.asarray(tok)
    f = _ref_filter(row, top_k, top_p) / 0.8
    q = np.exp(f - f.max())
    q /= q.sum()
    freq = np.bincount(tok, minlength=V) / n
    np.testing.assert_allclose(freq, q, atol=4 * np.sqrt(0.25 / n))
    assert (q[tok] > 0).all()
    # the returned log-prob is the unfiltered, temperature-1 one
    full = row - row.max() - np.log(np.exp(row - row.max()).sum())
    np.testing.assert_allclose(np.asarray(logp), full[tok], rtol=1e-5, atol=1e-6)


def test_greedy_dtype_shapes_and_errors():
    tok, logp = choose_tokens(jnp.asarray(LOGITS), None, greedy=True, top_k=2, top_p=0.1)
    assert tok.dtype == jnp.int32 and tok.shape == (4, 3) and logp.shape == (4, 3)
    np.testing.assert_array_equal(tok, LOGITS.argmax(-1))
    same = choose_tokens(jnp.asarray(LOGITS), jax.random.PRNGKey(2), top_k=1)[0]  # top-1 sampling is greedy
    np.testing.assert_array_equal(same, LOGITS.argmax(-1))
    # unfiltered sampling is jax.random.categorical on the float32 logits / temperature (callers rely on the draw)
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(choose_tokens(jnp.asarray(LOGITS), key, temperature=0.7)[0],
                                  jax.random.categorical(key, jnp.asarray(LOGITS) / 0.7, axis=-1))
    with pytest.raises(ValueError, match="rng"):
        choose_tokens(jnp.asarray(LOGITS), None)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(jnp.asarray(LOGITS), top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(jnp.asarray(LOGITS), top_p=1.5)
    jitted = jax.jit(lambda l, r: choose_tokens(l, r, top_p=0.9, top_k=5))(jnp.asarray(LOGITS), key)
    assert jitted[0].shape == (4, 3)


def test_sampler_arguments_are_checked():
    """Issue 17 item 6: temperature 0 with sampling and a [MASK] id outside the vocabulary fail, naming them."""
    from diffjax.diffusion import discrete_sampling as ds
    from diffjax.diffusion.masked import exclude_token_logit

    logits = jnp.zeros((2, 3, V))
    with pytest.raises(ValueError, match="temperature=0.0 with sampling: must be > 0"):
        choose_tokens(logits, jax.random.key(0), temperature=0.0)
    with pytest.raises(ValueError, match=f"mask_id={V} is outside the model's vocabulary \\[0, {V}\\)"):
        exclude_token_logit(logits, V)
    x = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="mask_id=99"):
        ds.topk_unmask_sample(lambda x, t: jnp.zeros(x.shape + (V,)), x, jax.random.key(0), mask_id=99, num_steps=2)
    assert choose_tokens(logits, None, greedy=True, temperature=0.0)[0].shape == (2, 3)  # greedy ignores it
