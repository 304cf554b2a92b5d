"""The train state: everything a resumed run needs to continue bit-identically."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """``step``: int32 [] (updates done); ``params``; ``opt_state`` (optax); ``rng``: uint32 [2]
    base key (step ``s`` uses ``fold_in(rng, s)``, so the key stream is a function of the step and
    needs no carrying); ``ema_params``: params pytree or None when ``ema_decay == 0``. The EMA
    warm-up (``ema_warmup``) needs no extra state: its update count is ``step`` (see
    ``ema_decay_at``), so resuming continues the same decay sequence.

    The data position is ``step`` itself: tasks' ``train_batches(start_step)`` are deterministic
    in the step, so a restored state also restores where the data stream was.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    rng: jax.Array
    ema_params: PyTree = None

    def eval_params(self) -> PyTree:
        """The params evaluation should use: EMA when on, else the raw params."""
        return self.params if self.ema_params is None else self.ema_params


def ema_decay_at(num_updates: jax.Array, ema_decay: float, warmup: bool = False) -> jax.Array | float:
    """The EMA decay used by update number ``num_updates`` (1 for the first update).

    Without warm-up: the constant ``ema_decay`` (a Python float, so the update is bit-identical to
    a run without this option). With warm-up, latent-diffusion's ``LitEma`` (used by DLSR's
    code base): ``min(ema_decay, (1 + n) / (10 + n))`` with n = ``num_updates``, counted like
    ``LitEma.num_updates`` (incremented before use: 2/11 at the first update, 0.918 at update 100,
    ``ema_decay`` from n = (10 d - 1) / (1 - d) on, e.g. 890 for d = 0.99). ``num_updates``: int
    [] (traced is fine; float32 arithmetic).
    """
    if not warmup:
        return ema_decay
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(jnp.float32(ema_decay), (1.0 + n) / (10.0 + n))


def ema_update(ema: PyTree, params: PyTree, decay) -> PyTree:
    """``ema <- decay * ema + (1 - decay) * params`` leafwise (``decay``: float or float32 [])."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
