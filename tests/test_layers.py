"""The custom-VJP layers of models/layers.py compute the same function and gradients as plain autodiff.

``add_bias``, ``gated_activation`` and ``softmax_attention`` exist only for XLA-CPU speed (issue 18); ``gelu_erf`` is the exact
GELU in torch's erf form. Each is checked against an independent formulation: jax autodiff of the plain
expression, and torch for the GELU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.masked import token_log_probs
from diffjax.models.layers import ACTIVATIONS, add_bias, gated_activation, gelu_erf, softmax_attention


def _rand(key, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), shape, dtype)


@pytest.mark.parametrize("bias_dtype", [jnp.float32, jnp.bfloat16])
def test_add_bias_value_and_gradients_match_broadcast_add(bias_dtype):
    x, b, w = _rand(0, (3, 5, 7)), _rand(1, (7,), bias_dtype), _rand(2, (3, 5, 7))

    def loss(add):
        return lambda x, b: jnp.sum(jnp.sin(add(x, b)) * w)  # input-dependent cotangent

    plain = lambda x, b: x + b.astype(x.dtype)  # noqa: E731
    np.testing.assert_array_equal(add_bias(x, b), plain(x, b))
    got = jax.grad(loss(add_bias), argnums=(0, 1))(x, b)
    want = jax.grad(loss(plain), argnums=(0, 1))(x, b)
    assert got[1].dtype == bias_dtype
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got[1], np.float32), np.asarray(want[1], np.float32), rtol=1e-2 if bias_dtype == jnp.bfloat16 else 1e-5)


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_new", "relu"])
def test_gated_activation_value_and_gradients_match_autodiff(name):
    g, u, w = _rand(0, (4, 6, 16)), _rand(1, (4, 6, 16)), _rand(2, (4, 6, 16))
    plain = lambda g, u: ACTIVATIONS[name](g) * u  # noqa: E731
    np.testing.assert_allclose(gated_activation(name, g, u), plain(g, u), rtol=1e-6)
    got = jax.grad(lambda g, u: jnp.sum(gated_activation(name, g, u) ** 2 * w), argnums=(0, 1))(g, u)
    want = jax.grad(lambda g, u: jnp.sum(plain(g, u) ** 2 * w), argnums=(0, 1))(g, u)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gated_activation_inside_jit_and_vmap():
    g, u = _rand(0, (3, 8)), _rand(1, (3, 8))
    f = jax.jit(jax.vmap(jax.grad(lambda g, u: jnp.sum(gated_activation("silu", g, u)))))
    np.testing.assert_allclose(f(g, u), jax.vmap(jax.grad(lambda g, u: jnp.sum(jax.nn.silu(g) * u)))(g, u), rtol=1e-6)


def test_gelu_erf_matches_jax_exact_gelu_and_torch():
    torch = pytest.importorskip("torch")
    x = jnp.linspace(-12.0, 12.0, 2001, dtype=jnp.float32)
    np.testing.assert_allclose(gelu_erf(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)  # erfc keeps tiny tails
    ref = torch.nn.functional.gelu(torch.from_numpy(np.asarray(x))).numpy()
    np.testing.assert_allclose(gelu_erf(x), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(gelu_erf(x)))(x),
                               jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=False)))(x), rtol=1e-5, atol=1e-6)


def test_token_log_probs_equals_indexed_log_softmax_with_and_without_inf():
    logits = _rand(0, (2, 5, 11)) * 4
    logits = logits.at[..., 3].set(-jnp.inf)  # an excluded token, as exclude_token_logit leaves it
    tokens = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    want = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(token_log_probs(logits, tokens), want, rtol=1e-6, atol=1e-6)
    finite = jnp.isfinite(want)
    g = jax.grad(lambda l: jnp.sum(jnp.where(finite, token_log_probs(l, tokens), 0)))(_rand(0, (2, 5, 11)))
    h = jax.grad(lambda l: jnp.sum(jnp.where(finite, jnp.take_along_axis(jax.nn.log_softmax(l, -1), tokens[..., None], -1)[..., 0], 0)))(_rand(0, (2, 5, 11)))
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-6)


def _attention_numpy(q, k, v, bias, scale, keep=None, rate=0.0):
    """float64 reference: materialised softmax probabilities (dropout on them), then the values product."""
    q, k, v, bias = (np.asarray(a, np.float64) for a in (q, k, v, bias))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if keep is not None:
        p = p * keep / (1 - rate)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_softmax_attention_matches_materialised_probabilities_with_mask_and_dropout():
    q, k, v = _rand(0, (2, 5, 3, 4)), _rand(1, (2, 6, 3, 4)), _rand(2, (2, 6, 3, 4))
    valid = np.ones((2, 6), bool)
    valid[0, 4:] = False  # padded keys, as BERT's additive mask
    bias = jnp.where(jnp.asarray(valid), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
    scale = 4 ** -0.5
    got = softmax_attention(q, k, v, bias, scale=scale)
    np.testing.assert_allclose(got, _attention_numpy(q, k, v, bias, scale), rtol=1e-5, atol=1e-6)
    rate = 0.3
    keep = np.asarray(jax.random.bernoulli(jax.random.key(3), 1 - rate, (2, 3, 5, 6)))
    dropped = softmax_attention(q, k, v, bias, scale=scale, weights_dropout=lambda e: e * keep / (1 - rate))
    np.testing.assert_allclose(dropped, _attention_numpy(q, k, v, bias, scale, keep, rate), rtol=1e-5, atol=1e-6)

    w = _rand(4, got.shape)

    def plain(q, k, v):
        p = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale + bias, axis=-1)
        return jnp.sum(jnp.sin(jnp.einsum("bhqk,bkhd->bqhd", p, v)) * w)

    want = jax.grad(plain, argnums=(0, 1, 2))(q, k, v)
    got_grads = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(softmax_attention(q, k, v, bias, scale=scale)) * w),
                         argnums=(0, 1, 2))(q, k, v)
    for g, ww in zip(got_grads, want):
        np.testing.assert_allclose(g, ww, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got_grads[1])[0, 4:], 0.0)  # padded keys get no gradient
