"""The error classes of checkpoint files: one per kind of failure (design.md, convention 8).

* ``CheckpointMismatchError`` -- a readable checkpoint that does not fit the model / state the config
  builds. Raised by orbax train-state restores (``diffjax.checkpoints.orbax``) and by the strict foreign
  imports (``diffjax.checkpoints.hf`` and its family modules, ``gguf``, ``efficientnet``); ``orbax`` and
  ``hf`` re-export this same class, so ``orbax.CheckpointMismatchError is hf.CheckpointMismatchError``.
  The message lists every missing / unexpected key and every shape / dtype mismatch at once
  (design.md, convention 6).
* ``CheckpointFormatError`` -- a weight or config file that cannot be read as what it claims to be:
  truncated, empty, garbage, a header or offsets that point outside the file, a tensor view beyond its
  storage, a pickle that would need code diffjax does not run, a malformed ``config.json``. Raised by
  every reader in ``diffjax.checkpoints`` (safetensors, torch ``.bin`` / ``.pth``, flax msgpack, GGUF,
  sharded indexes, ``config.json``). The message starts with the file's path and says what is wrong.
"""

from __future__ import annotations

import os


class CheckpointMismatchError(ValueError):
    """A checkpoint's tree paths / keys / shapes do not match what the current config expects."""


class CheckpointFormatError(ValueError):
    """A checkpoint / weight / config file is unreadable, corrupt or not what its name says.

    ``file`` is the path of the offending file; ``str(err)`` starts with it.
    """

    def __init__(self, file: str | os.PathLike, problem: str):
        self.file = os.fspath(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}")


def is_int(x) -> bool:
    """A Python int that is not a bool (what a file's header may claim as a size, offset or stride)."""
    return isinstance(x, int) and not isinstance(x, bool)
