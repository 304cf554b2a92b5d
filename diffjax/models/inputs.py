"""Token ids checked before they reach an embedding gather (which clamps or wraps silently).

``check_token_ids(ids, vocab_size, name=...)``: ids that are not ``[batch, length]`` (e.g. one unbatched
sequence of shape ``(n,)``) and ids of a non-integer dtype are refused always
(dtype is static, so this holds under ``jit`` too); ids outside ``[0, vocab_size)`` are refused
with the first offending value and its position when the ids are concrete (an eager
``model.apply`` / a public entry point called with numpy or jax arrays). Inside ``jit`` the values
are tracers and cannot be inspected without a transform: there the host boundary checks them —
the text pipeline checks every tokenised example against the tokenizer's vocabulary once, and a
user who feeds ids of their own into a jitted function can wrap it with
``jax.experimental.checkify.checkify`` around ``checkify_token_ids``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


class TokenIdError(ValueError):
    """Token ids of the wrong dtype, or outside the model's vocabulary."""


def check_token_ids(ids, vocab_size: int, *, name: str = "input_ids") -> None:
    """Raises ``TokenIdError`` (see the module docstring); a no-op on the values of tracers."""
    shape = tuple(np.shape(ids))
    if len(shape) != 2:
        hint = f" (one sequence: add a batch axis, {name}[None])" if len(shape) == 1 else ""
        raise TokenIdError(f"{name}: expected [batch, length] ids, got shape {shape}{hint}")
    dtype = np.dtype(ids.dtype) if hasattr(ids, "dtype") else np.asarray(ids).dtype
    if not np.issubdtype(dtype, np.integer):
        raise TokenIdError(f"{name}: token ids must be integers; got dtype {dtype} (cast with .astype(np.int32) "
                           f"only if the values are whole token ids)")
    if isinstance(ids, jax.core.Tracer):
        return
    a = np.asarray(ids)
    bad = (a < 0) | (a >= vocab_size)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise TokenIdError(f"{name}: token id {int(a[pos])} at position {pos} is outside the vocabulary "
                           f"[0, {vocab_size}) ({int(bad.sum())} ids out of range); was the text tokenised with "
                           f"this model's tokenizer?")


def checkify_token_ids(ids: jax.Array, vocab_size: int) -> None:
    """The in-``jit`` form: a ``checkify.check`` (run the function under ``checkify.checkify``)."""
    checkify.check(jnp.all((ids >= 0) & (ids < vocab_size)), f"token ids outside [0, {vocab_size})")
