"""The one error class of a checkpoint that does not fit the model / state the config builds.

Raised by orbax train-state restores (``diffjax.checkpoints.orbax``) and by the strict foreign
imports (``diffjax.checkpoints.hf`` and its family modules); both modules re-export this same class,
so ``orbax.CheckpointMismatchError is hf.CheckpointMismatchError``. The message lists every missing /
unexpected key and every shape mismatch at once (design.md, convention 6).
"""

from __future__ import annotations


class CheckpointMismatchError(ValueError):
    """A checkpoint's tree paths / keys / shapes do not match what the current config expects."""
