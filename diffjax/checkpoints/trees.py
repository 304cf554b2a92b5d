"""The one pytree flattener for checkpoint comparisons, imports and logs.

``flatten_tree(tree)`` -> ``{"a/b/kernel": leaf}``: the same '/'-joined key paths as the sharding
rule tables and the orbax mismatch messages (``jax.tree_util.keystr(path, simple=True)``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax


def _part(entry) -> str:
    for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten_tree(tree: Any, *, separator: Optional[str] = "/",
                 is_leaf: Optional[Callable[[Any], bool]] = None) -> dict:
    """Flattens any pytree (nested dicts, lists, NamedTuples, dataclasses) to ``{path: leaf}``.

    Args:
      tree: the pytree; ``None`` leaves and empty containers vanish, as in ``jax.tree_util``.
      separator: joins the path parts into one string key (default "/": ``"params/dense/kernel"``);
        ``None`` keeps each path as a tuple of strings (``("params", "dense", "kernel")``), as
        ``flax.traverse_util.flatten_dict`` does for dicts.
      is_leaf: optional predicate that stops the descent (``jax.tree_util`` semantics).
    Returns:
      dict path -> leaf, in ``jax.tree_util`` leaf order.
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)
    if separator is None:
        return {tuple(_part(e) for e in path): leaf for path, leaf in leaves}
    return {jax.tree_util.keystr(path, simple=True, separator=separator): leaf for path, leaf in leaves}
