"""A small MLP denoiser for low-dimensional data (e.g. the 2-D Gaussian-mixture DDPM task)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.embeddings import TimestepMLP

# Default sharding rules (see configs/gaussian2d.py, "sharding_rules"): hidden units split over
# the "model" mesh axis (Megatron-style column-then-row split of each hidden layer).
SHARDING_RULES = (
    (r"hidden_\d+/kernel$", (None, "model")),
    (r"hidden_\d+/bias$", ("model",)),
    (r"out/kernel$", ("model", None)),
)


class MLPDenoiser(nn.Module):
    """``(x_t [B, D] float32, t int32 [B]) -> prediction [B, D]`` (eps, x0 or v, as the task trains it).

    The timestep goes through ``TimestepMLP`` (sinusoidal -> Dense -> SiLU -> Dense, width
    ``time_embed_dim``; ``t`` scaled by ``time_scale``), is concatenated to ``x_t``; then ``depth`` SiLU layers of width ``hidden``
    named ``hidden_{i}`` and a linear ``out`` layer.
    """

    features: int
    hidden: int = 128
    depth: int = 3
    time_embed_dim: int = 32
    time_scale: float = 1.0  # t is multiplied by this before the sinusoid (e.g. 1000 / T)

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        temb = TimestepMLP(self.time_embed_dim, self.time_embed_dim, name="time_mlp")(
            t.astype(jnp.float32) * self.time_scale)
        h = jnp.concatenate([x.astype(jnp.float32), temb], axis=-1)
        for i in range(self.depth):
            h = nn.silu(nn.Dense(self.hidden, name=f"hidden_{i}")(h))
        return nn.Dense(self.features, name="out")(h)
