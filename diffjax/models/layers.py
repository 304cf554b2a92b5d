"""Small layers shared by several model families: the activation table, RMSNorm."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# The one activation table of diffjax/models: HF config names (``hidden_act``, T5's
# ``feed_forward_proj`` suffix, EfficientNet's activation) -> functions. gelu is exact (erf);
# gelu_new / gelu_pytorch_tanh the tanh approximation; swish == silu; relu6 = min(max(x, 0), 6).
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "relu6": lambda x: jnp.clip(x, 0, 6),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str):
    """The activation function called ``name`` in ``ACTIVATIONS``; ValueError naming the supported ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


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
