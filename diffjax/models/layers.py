"""Small layers shared by several model families."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class RMSNorm(nn.Module):
    """RMS norm (HF ``LlamaRMSNorm`` / ``T5LayerNorm``): ``y = scale * x / sqrt(mean(x**2) + eps)``.

    x: [..., D] -> [..., D] in ``dtype``; one param ``scale`` [D] (init ones), no bias / centering.
    The mean square is computed in float32 whatever the input dtype (as HF does).
    """

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(variance + self.eps)).astype(self.dtype)
        return scale.astype(self.dtype) * y
