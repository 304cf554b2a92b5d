"""Key tables shared by the HF family modules (``hf_llama``, ``hf_t5``, ``hf_bert``); the nested-dict
path helpers ``get_path`` / ``set_path`` also serve ``checkpoints/efficientnet.py``.

A family describes its checkpoint layout as a key table: ``[(hf_key, param_path, transpose)]``, one
row per parameter, where ``param_path`` is the tuple of nested dict keys in the Flax ``params`` tree
and ``transpose`` says the HF tensor is the transpose of the Flax array (a PyTorch ``Linear.weight``
[out, in] vs a Flax ``Dense.kernel`` [in, out]). The two walks below convert in either direction.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

KeyTable = Sequence[tuple[str, tuple[str, ...], bool]]


def set_path(tree: dict, path: Sequence[str], value) -> None:
    """``tree[path[0]][path[1]]...[path[-1]] = value``, creating the intermediate dicts."""
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def get_path(tree, path: Sequence[str]):
    """``tree[path[0]][path[1]]...`` (``KeyError`` if absent)."""
    for p in path:
        tree = tree[p]
    return tree


def table_to_params(tensors: Mapping[str, Any], table: KeyTable, dtype=None) -> dict:
    """{HF key: array [PyTorch layout]} -> nested params dict (``jnp`` arrays, cast to ``dtype`` if given).

    Keys not in the table are ignored; a table key missing from ``tensors`` raises ``KeyError`` naming it.
    """
    params: dict = {}
    for hf_key, path, transpose in table:
        if hf_key not in tensors:
            raise KeyError(f"{hf_key} missing from the tensors (needed for {'/'.join(path)}).")
        arr = np.asarray(tensors[hf_key])
        if transpose:
            arr = arr.T
        set_path(params, path, jnp.asarray(np.ascontiguousarray(arr), dtype=dtype))
    return params


def params_to_table(params, table: KeyTable, *, hint: str = "") -> dict:
    """Nested params -> {HF key: array [PyTorch layout]}; traceable (only indexing and ``.T``).

    A table path missing from ``params`` raises ``ValueError`` naming it and the HF key; ``hint`` is
    appended to the question "are these params from this model{hint}?".
    """
    out = {}
    for hf_key, path, transpose in table:
        try:
            arr = get_path(params, path)
        except KeyError as e:
            raise ValueError(f"params has no {'/'.join(path)} (needed for {hf_key}); are these params "
                             f"from this model{hint}?") from e
        out[hf_key] = arr.T if transpose else arr
    return out
