"""Sinusoidal timestep embedding and TimestepMLP."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.embeddings import TimestepMLP, sinusoidal_embedding


def _reference(t, dim, max_period=10000.0):
    """Element-by-element Python loop of the DDPM / guided-diffusion formula (cos block, then sin)."""
    half = dim // 2
    out = np.zeros((len(t), dim))
    for b, tb in enumerate(t):
        for i in range(half):
            w = math.exp(-math.log(max_period) * i / half)
            out[b, i] = math.cos(tb * w)
            out[b, half + i] = math.sin(tb * w)
    return out


@pytest.mark.parametrize("dim,max_period", [(8, 10000.0), (7, 10000.0), (32, 1000.0)])
def test_sinusoidal_matches_reference_loop(dim, max_period):
    t = [0, 1, 5, 99, 999]
    got = jax.jit(sinusoidal_embedding, static_argnums=(1, 2))(jnp.array(t), dim, max_period)
    assert got.shape == (5, dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _reference(t, dim, max_period), atol=2e-4)
    if dim % 2:
        np.testing.assert_array_equal(got[:, -1], 0.0)


def test_sinusoidal_inner_product_depends_only_on_time_difference():
    e = sinusoidal_embedding(jnp.array([3.0, 10.0, 50.0, 57.0]), 64)
    d1 = float(e[0] @ e[1])  # difference 7
    d2 = float(e[2] @ e[3])  # difference 7
    np.testing.assert_allclose(d1, d2, rtol=1e-4)
    np.testing.assert_allclose(float(e[0] @ e[0]), 32.0, rtol=1e-5)  # |e|^2 = dim / 2
    assert d1 < 31.0  # distinct times are not identical


def test_sinusoidal_accepts_float_and_scalar_and_rejects_2d():
    np.testing.assert_allclose(sinusoidal_embedding(2.5, 6), sinusoidal_embedding(jnp.array([2.5]), 6))
    with pytest.raises(ValueError, match=r"\[B\]"):
        sinusoidal_embedding(jnp.zeros((2, 3)), 4)


def test_timestep_mlp_equals_manual_composition():
    m = TimestepMLP(embed_dim=16, hidden_dim=24, out_dim=8)
    t = jnp.array([0, 3, 77], jnp.int32)
    params = m.init(jax.random.PRNGKey(0), t)
    p = params["params"]
    assert p["dense_0"]["kernel"].shape == (16, 24) and p["dense_1"]["kernel"].shape == (24, 8)
    out = jax.jit(m.apply)(params, t)
    e = np.asarray(sinusoidal_embedding(t, 16), np.float64)
    h = e @ np.asarray(p["dense_0"]["kernel"]) + np.asarray(p["dense_0"]["bias"])
    h = h / (1 + np.exp(-h))  # SiLU
    want = h @ np.asarray(p["dense_1"]["kernel"]) + np.asarray(p["dense_1"]["bias"])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # Different timesteps give different embeddings; out_dim defaults to hidden_dim.
    assert np.abs(np.asarray(out[0] - out[1])).max() > 1e-3
    m2 = TimestepMLP(embed_dim=16, hidden_dim=24)
    assert m2.apply(m2.init(jax.random.PRNGKey(1), t), t).shape == (3, 24)


def test_timestep_mlp_bfloat16_compute():
    m = TimestepMLP(embed_dim=16, hidden_dim=24, out_dim=8, dtype=jnp.bfloat16)
    t = jnp.array([1, 2])
    params = m.init(jax.random.PRNGKey(0), t)
    out = m.apply(params, t)
    assert out.dtype == jnp.bfloat16 and params["params"]["dense_0"]["kernel"].dtype == jnp.float32
    full = TimestepMLP(embed_dim=16, hidden_dim=24, out_dim=8).apply(params, t)
    np.testing.assert_allclose(np.asarray(out, np.float32), full, atol=0.05)
