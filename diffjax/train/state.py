"""The train state: everything a resumed run needs to continue bit-identically."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """``step``: int32 [] (updates done); ``params``; ``opt_state`` (optax); ``rng``: uint32 [2]
    base key (step ``s`` uses ``fold_in(rng, s)``, so the key stream is a function of the step and
    needs no carrying); ``ema_params``: params pytree or None when ``ema_decay == 0``.

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
