"""Small layers shared by several model families: the activation table, RMSNorm."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def gelu_erf(x):
    """Exact GELU in PyTorch's form, ``0.5 * x * (1 + erf(x / sqrt(2)))``.

    The same function as ``jax.nn.gelu(approximate=False)`` (which goes through ``erfc``), written as
    torch writes it so the two agree to float32 rounding; on CPU the speed difference was within noise.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(np.sqrt(0.5)).astype(x.dtype)))


# The one activation table of diffjax/models: HF config names (``hidden_act``, T5's
# ``feed_forward_proj`` suffix, EfficientNet's activation) -> functions. gelu is exact (erf);
# gelu_new / gelu_pytorch_tanh the tanh approximation; swish == silu; relu6 = min(max(x, 0), 6).
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "relu6": lambda x: jnp.clip(x, 0, 6),
    "gelu": gelu_erf,
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


@jax.custom_vjp
def add_bias(x, bias):
    """``x + bias`` (x: [..., F], bias: [F]) whose bias gradient is a matrix-vector product.

    Autodiff of a broadcast add gives the bias gradient as a reduce over every leading axis; XLA's
    CPU backend ran that reduce in 338 ms for RoBERTa's [1024, 50265] MLM logits on 2 cores
    (``benchmarks/profile_step.py``); here it is a ``ones @ g`` matrix-vector dot instead. Values and
    gradients are the same function; only the backward program differs.
    """
    return x + bias.astype(x.dtype)


def _add_bias_fwd(x, bias):
    return add_bias(x, bias), jnp.zeros((), bias.dtype)  # residual: only the bias dtype


def _add_bias_bwd(bias_dtype_scalar, g):
    bias_dtype = bias_dtype_scalar.dtype
    rows = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((1, rows.shape[0]), rows.dtype)
    return g, jnp.dot(ones, rows, preferred_element_type=jnp.float32)[0].astype(bias_dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gated_activation(name: str, gate, up):
    """``act(gate) * up`` (SwiGLU for ``name="silu"``, GeGLU for a gelu): gate, up [..., F] -> [..., F].

    The backward computes ``d gate`` and ``d up`` as plain arrays behind an optimisation barrier, so
    XLA cannot fuse the activation's derivative into the transpose that feeds the weight-gradient
    dot. The main fix for that (35 ms a layer for SmolLM2-135M at 8x128 on 2 cores, as a 3-d
    transpose) is calling this on [B*L, F] rows, as ``LlamaMLP`` does: with rows, plain
    ``act(gate) * up`` loses the transpose too (one run of ``benchmarks/profile_step.py --model llama``:
    7.36 s before, 7.05 s with rows alone, 6.32 s with rows and this VJP). Same values and gradients.
    """
    return activation(name)(gate) * up


def _gated_fwd(name, gate, up):
    return gated_activation(name, gate, up), (gate, up)


def _gated_bwd(name, residuals, g):
    gate, up = residuals
    act, act_vjp = jax.vjp(activation(name), gate)
    (d_gate,) = act_vjp(g * up)
    return jax.lax.optimization_barrier((d_gate, g * act))


gated_activation.defvjp(_gated_fwd, _gated_bwd)


def softmax_attention(q, k, v, bias=None, *, scale: float, mask=None, weights_dropout=None):
    """Multi-head attention core ``softmax(q k^T * scale + bias) v``, normalised after the values product.

    q: [B, L, H, hd]; k, v: [B, S, H, hd]; bias: additive, broadcastable to [B, H, L, S] (key padding
    mask: [B, 1, 1, S]) or None; mask: bool broadcastable to [B, H, L, S], True = may attend (scores of
    masked keys set to the float32 minimum, as ``jnp.where`` before a softmax), or None -> [B, L, H, hd]
    in q's dtype. ``weights_dropout``: a callable applied to the unnormalised weights exp(s - max s)
    [B, H, L, S] (dropout there equals dropout on the softmax probabilities: the normaliser is per row
    and is taken before it), or None.

    Same function as materialising the probabilities; it divides the [B, L, H, hd] output by the row sums
    instead of the [B, H, L, S] weights. With the probabilities between the two dots, XLA:CPU fused
    dot -> softmax -> dot into one slow YNNPACK fusion in forward-only programs; RoBERTa-base 8x128 fp32
    forward 1725 -> 1623 ms median, fwd+bwd unchanged (paired, ``python benchmarks/ab_step.py --model
    roberta --file diffjax/models/bert.py`` against the materialised form).
    """
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * jnp.float32(scale)
    if bias is not None:
        s = s + bias.astype(jnp.float32)
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
    row_sum = jnp.sum(e, axis=-1)  # [B, H, L]
    if weights_dropout is not None:
        e = weights_dropout(e)
    out = jnp.einsum("bhqk,bkhd->bqhd", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / jnp.transpose(row_sum, (0, 2, 1))[..., None]).astype(q.dtype)


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

