"""Timestep embeddings shared by the Gaussian denoisers (LFDN of papers.md 003, text denoiser of 000).

* :func:`sinusoidal_embedding` — the Transformer / DDPM sinusoidal embedding of a (diffusion) step.
* :class:`TimestepMLP` — ``sinusoidal(t, embed_dim) -> Dense(hidden) -> SiLU -> Dense(out)``
  (papers.md 003: sinusoidal(t, 1440) -> Dense(720) -> SiLU -> Dense(720);
  papers.md 000: sinusoidal -> MLP 1024 -> 4096 -> 1024).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def sinusoidal_embedding(t, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ``[cos(t w_0), ..., cos(t w_{h-1}), sin(t w_0), ..., sin(t w_{h-1})]``.

    ``w_i = max_period ** (-i / h)``, ``h = dim // 2`` (Vaswani et al. 2017 sec. 3.5, in the
    cos-then-sin order of the DDPM / guided-diffusion ``timestep_embedding``); an odd ``dim`` gets
    one trailing zero. The inner product ``<e(t1), e(t2)> = sum_i cos((t1 - t2) w_i)`` depends only
    on ``t1 - t2``.

    Args:
      t: ``[B]`` int or float steps (a scalar is treated as ``[1]``). dim: static output width >= 1.
    Returns: ``[B, dim]`` float32.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1; got {dim}")
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise ValueError(f"t must be [B] (one step per example); got shape {t.shape}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    args = t[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepMLP(nn.Module):
    """``t: [B] -> [B, out_dim]``: ``Dense_out(SiLU(Dense_hidden(sinusoidal(t, embed_dim))))``.

    Attributes:
      embed_dim: width of the sinusoidal embedding. hidden_dim: first Dense width.
      out_dim: output width (defaults to hidden_dim). max_period: of the sinusoid.
      dtype / param_dtype: computation / parameter dtypes.
    Params: ``dense_0/{kernel [embed_dim, hidden_dim], bias}``, ``dense_1/{kernel [hidden_dim, out_dim], bias}``.
    """

    embed_dim: int
    hidden_dim: int
    out_dim: int | None = None
    max_period: float = 10000.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t) -> jax.Array:
        emb = sinusoidal_embedding(t, self.embed_dim, self.max_period).astype(self.dtype)
        h = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="dense_0")(emb)
        h = nn.silu(h)
        out = self.out_dim if self.out_dim is not None else self.hidden_dim
        return nn.Dense(out, dtype=self.dtype, param_dtype=self.param_dtype, name="dense_1")(h)
