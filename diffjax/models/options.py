"""How a model is laid out and computed, apart from its architecture: ``ModelOptions``.

The run's top-level config fields (``diffjax/train/config.py``) choose them for every task:

* ``scan_layers``: run the transformer stack as one ``nn.scan``-ned layer (params stacked on a leading
  layer axis under a module named ``layers``): compile time independent of depth.
* ``remat``: rematerialisation of each layer in the backward pass: ``"none"`` | ``"full"`` (recompute
  everything) | ``"dots_saveable"`` (keep matmul outputs, recompute the rest;
  ``jax.checkpoint_policies.dots_saveable``).
* ``precision``: ``"fp32"`` | ``"bf16"`` (bf16 compute, fp32 params and optimizer state, fp32 softmax and
  loss) | ``"bf16_params"`` (bf16 params as well).

A task factory that takes the keyword ``model_options`` gets them from ``build_task``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots_saveable")
PRECISIONS = ("fp32", "bf16", "bf16_params")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Layout and numerics of a model (hashable: safe as a static jit argument)."""

    scan_layers: bool = False
    remat: str = "none"
    precision: str = "fp32"

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}: expected one of {REMAT_POLICIES}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {PRECISIONS}.")

    @classmethod
    def from_config(cls, config) -> "ModelOptions":
        """From a run config's top-level ``scan_layers`` / ``remat`` / ``precision`` (defaults if absent)."""
        get = config.get if hasattr(config, "get") else (lambda k, d: getattr(config, k, d))
        return cls(scan_layers=bool(get("scan_layers", False)), remat=str(get("remat", "none")),
                   precision=str(get("precision", "fp32")))

    @property
    def compute_dtype(self):
        """The dtype of activations and matmuls."""
        return jnp.float32 if self.precision == "fp32" else jnp.bfloat16

    @property
    def param_dtype(self):
        """The dtype params are stored (and optimised) in."""
        return jnp.bfloat16 if self.precision == "bf16_params" else jnp.float32


DEFAULT = ModelOptions()
