"""A small MLP denoiser for low-dimensional data (e.g. the 2-D Gaussian-mixture DDPM task)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Default sharding rules (see configs/gaussian2d.py, "sharding_rules"): hidden units split over
# the "model" mesh axis (Megatron-style column-then-row split of each hidden layer).
SHARDING_RULES = (
    (r"hidden_\d+/kernel$", (None, "model")),
    (r"hidden_\d+/bias$", ("model",)),
    (r"out/kernel$", ("model", None)),
)


class MLPDenoiser(nn.Module):
    """``(x_t [B, D] float32, t int32 [B]) -> prediction [B, D]`` (eps, x0 or v, as the task trains it).

    The timestep gets a learned embedding (``num_timesteps + 1`` rows, index 0 = clean data),
    concatenated to ``x_t``; then ``depth`` SiLU layers of width ``hidden`` named ``hidden_{i}``
    and a linear ``out`` layer.
    """

    features: int
    hidden: int = 128
    depth: int = 3
    num_timesteps: int = 1000
    time_embed_dim: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        temb = nn.Embed(self.num_timesteps + 1, self.time_embed_dim, name="time_embed")(t.astype(jnp.int32))
        h = jnp.concatenate([x.astype(jnp.float32), temb], axis=-1)
        for i in range(self.depth):
            h = nn.silu(nn.Dense(self.hidden, name=f"hidden_{i}")(h))
        return nn.Dense(self.features, name="out")(h)
