"""Layer stacks: one ``nn.scan``-ned layer or unrolled layers, rematerialised by policy; the params'
two layouts and the pure functions converting between them.

* **Layouts.** Unrolled, a stack's layers are sibling modules ``<stack>/<stem><i>`` (BERT
  ``encoder/layer_<i>``, Llama ``layers_<i>``, T5 ``{encoder,decoder}/block_<i>``). Scanned
  (``scan_layers=True``), one module ``<stack>/layers`` holds every param with a leading layer axis:
  ``.../layers/attention/query/kernel`` is ``[num_layers, D, D]``. ``stack_layers`` /
  ``unstack_layers`` convert one stack (used at the HF importer boundary), ``relayout_like`` a whole
  tree into another tree's layout (used by ``init_from`` between unrolled and scanned runs).
* **Remat.** ``"none"`` | ``"full"`` (``nn.remat``: recompute the layer in the backward pass) |
  ``"dots_saveable"`` (keep matmul outputs, ``jax.checkpoint_policies.dots_saveable``).
* **Scan.** ``nn.scan`` over the layer class with ``variable_axes={"params": 0}``,
  ``split_rngs={"params": True, "dropout": True}``: the layer's ``__call__(carry, *args) -> (carry, y)``
  runs ``length`` times; the per-layer ``y`` come back stacked on a leading axis.
* **FSDP inside the scan.** Under ``gather_layer_params(shardings)`` (the train step, for "fsdp" /
  "fsdp+tp") each scanned layer's params are all-gathered in the loop body, one layer at a time (ZeRO-3),
  and their gradients reduce-scattered back to the split layout there: the stacked ``[L, ...]`` params are
  never whole on a device. Outside it (init, evaluation) the layer is unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.options import REMAT_POLICIES
from diffjax.runtime import path_str

SCANNED = "layers"  # the name of a scanned stack's module (sharding rules match it)
_UNROLLED = re.compile(r"^(layer_|layers_|block_)(\d+)$")  # the unrolled names of the three families
UNROLLED_STEMS = ("layer_", "layers_", "block_")


def unrolled_paths(path: str, num_layers: int) -> dict[str, list[str]]:
    """The '/'-joined path of a scanned param (``.../layers/...``) -> ``{stem: [its unrolled paths, layer
    0 .. num_layers-1]}`` for each family's stem (``encoder/layers/x`` -> ``encoder/layer_0/x``, ...);
    ``{}`` for a path outside a scanned stack."""
    parts = path.split("/")
    if SCANNED not in parts:
        return {}
    j = parts.index(SCANNED)
    return {stem: ["/".join(parts[:j] + [f"{stem}{i}"] + parts[j + 1:]) for i in range(int(num_layers))]
            for stem in UNROLLED_STEMS}


def remat_name(value) -> str:
    """A model config's ``remat`` as a policy name: the old bools map True -> "full", False -> "none"."""
    if isinstance(value, (bool, np.bool_)):
        return "full" if value else "none"
    if value not in REMAT_POLICIES:
        raise ValueError(f"remat={value!r}: expected one of {REMAT_POLICIES} (config.remat).")
    return value


def rematted(layer_cls, remat: str, *, static_argnums: Sequence[int] = (), scanned: bool = False):
    """``layer_cls`` rematerialised by policy ``remat`` (module docstring); ``static_argnums`` count from 1
    (the first argument after ``self``), as ``nn.remat``'s."""
    remat = remat_name(remat)
    if remat == "none":
        return layer_cls
    policy = jax.checkpoint_policies.dots_saveable if remat == "dots_saveable" else None
    return nn.remat(layer_cls, policy=policy, static_argnums=tuple(static_argnums), prevent_cse=not scanned)


# (gathered, split) shardings of one layer's param, by its path inside the layer and its shape; None: as is
LayerShardings = Callable[[str, tuple], "tuple[Any, Any] | None"]
_LAYER_SHARDINGS: contextvars.ContextVar[LayerShardings | None] = contextvars.ContextVar("layer_shardings",
                                                                                         default=None)


@contextlib.contextmanager
def gather_layer_params(layer_shardings: LayerShardings):
    """While tracing inside it, every scanned layer's params pass through ``gather_for_layer`` with the
    ``(gathered, split)`` shardings ``layer_shardings(path in the layer, per-layer shape)`` gives (module
    docstring); a param it gives None for is left to XLA."""
    token = _LAYER_SHARDINGS.set(layer_shardings)
    try:
        yield
    finally:
        _LAYER_SHARDINGS.reset(token)


def gather_for_layer(x, gathered, split):
    """``x`` constrained to ``gathered`` (the all-gather of a ZeRO-3 weight); its cotangent constrained to
    ``split`` (the reduce-scatter of its gradient). The identity on values."""

    @jax.custom_vjp
    def gather(x):
        return jax.lax.with_sharding_constraint(x, gathered)

    def fwd(x):
        return gather(x), None

    def bwd(_, g):
        return (jax.lax.with_sharding_constraint(g, split),)

    gather.defvjp(fwd, bwd)
    return gather(x)


def _gathered_layer(variables):
    """``map_variables``' ``trans_in_fn``: the layer's params through ``gather_for_layer`` under
    ``gather_layer_params``; unchanged outside it."""
    lookup = _LAYER_SHARDINGS.get()
    if lookup is None:
        return variables

    def one(path, x):
        rel = path_str(path)
        pair = lookup(rel[len("params/"):] if rel.startswith("params/") else rel, tuple(x.shape))
        return x if pair is None else gather_for_layer(x, *pair)

    return jax.tree_util.tree_map_with_path(one, variables)


def layer_class(layer_cls, *, remat: str, scan: bool, length: int, in_axes: tuple = (),
                static_argnums: Sequence[int] = ()):
    """The class a stack instantiates: ``layer_cls`` (rematerialised by ``remat``), or with ``scan`` one
    ``nn.scan`` of it over ``length`` layers (instantiate it once, named ``SCANNED``), whose params are
    gathered one layer at a time under ``gather_layer_params``. ``in_axes``: one entry per argument after
    the carry (``nn.broadcast``: the same for every layer; 0: sliced per layer)."""
    if not scan:
        return rematted(layer_cls, remat, static_argnums=static_argnums)
    # the gather inside the remat: the backward pass gathers each layer again instead of keeping every
    # gathered layer alive from the forward pass (which would cost the whole stack per device)
    cls = nn.map_variables(layer_cls, "params", trans_in_fn=_gathered_layer, init=True)
    cls = rematted(cls, remat, static_argnums=static_argnums, scanned=True)
    return nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=tuple(in_axes), length=int(length))


# ----------------------------------------------------------------------------- params layouts


def _node(tree, parts):
    for p in parts:
        tree = tree[p]
    return tree


def _replace(tree: dict, parts, node: dict) -> dict:
    """A copy of ``tree`` with the dict at path ``parts`` replaced by ``node`` (only the path is copied)."""
    if not parts:
        return node
    out = dict(tree)
    out[parts[0]] = _replace(tree[parts[0]], parts[1:], node)
    return out


def _stack(leaves):
    if all(isinstance(x, np.ndarray) for x in leaves):
        return np.stack(leaves)
    return jnp.stack([jnp.asarray(x) for x in leaves])


def _stack_node(node: dict, stem: str, count: int | None = None) -> dict:
    """``node``'s layers ``<stem>0 .. <stem>{count-1}`` (default: all) stacked into ``layers``; later ones kept."""
    idx = sorted(int(m.group(2)) for k in node if (m := _UNROLLED.match(k)) and m.group(1) == stem)
    if not idx:
        raise ValueError(f"no layers named {stem}<i> to stack (found {sorted(node)})")
    if idx[:count] != list(range(len(idx[:count]))) or (count is not None and len(idx) < count):
        raise ValueError(f"layers {stem}<i> are not numbered 0..{(count or len(idx)) - 1}: {idx}")
    idx = idx[:count]
    layers = [node[f"{stem}{i}"] for i in idx]
    structure = jax.tree_util.tree_structure(layers[0])
    for i, layer in enumerate(layers):
        if jax.tree_util.tree_structure(layer) != structure:
            raise ValueError(f"{stem}{i} has other params than {stem}0: the layers cannot be stacked")
    stacked = jax.tree_util.tree_map(lambda *xs: _stack(xs), *layers)
    out = {k: v for k, v in node.items() if k not in {f"{stem}{i}" for i in idx}}
    out[SCANNED] = stacked
    return out


def _unstack_node(node: dict, stem: str) -> dict:
    stacked = node[SCANNED]
    n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    out = {k: v for k, v in node.items() if k != SCANNED}
    for i in range(n):
        out[f"{stem}{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    return out


def stack_layers(tree: dict, prefix: str) -> dict:
    """Unrolled -> scanned: ``prefix = "<stack path>/<stem>"`` (e.g. ``"encoder/layer_"``, ``"layers_"`` at
    the root) names the layers ``<stem>0 .. <stem>{n-1}`` under the stack; they become one subtree
    ``<stack path>/layers`` whose leaves are ``[n, ...]`` (each layer's leaf stacked). Pure: ``tree`` is not
    changed. ``ValueError`` when the layers are missing, not numbered 0..n-1, or differ in their params."""
    path, _, stem = prefix.rpartition("/")
    parts = [p for p in path.split("/") if p]
    return _replace(tree, parts, _stack_node(_node(tree, parts), stem))


def unstack_layers(tree: dict, prefix: str) -> dict:
    """Scanned -> unrolled, the inverse of ``stack_layers(tree, prefix)``: ``<stack path>/layers`` leaves
    ``[n, ...]`` become ``<stem>0 .. <stem>{n-1}``. Traceable (indexing only)."""
    path, _, stem = prefix.rpartition("/")
    parts = [p for p in path.split("/") if p]
    return _replace(tree, parts, _unstack_node(_node(tree, parts), stem))


def relayout_like(source: Any, target: Any) -> Any:
    """``source`` with every layer stack in ``target``'s layout: a stack that ``target`` holds scanned
    (``.../layers``) and ``source`` unrolled (``.../layer_<i>``, ``layers_<i>``, ``block_<i>``) is stacked,
    and the reverse unstacked (with ``target``'s names). Other paths are left as they are (so a partial
    or larger source stays one: a source with more layers than a scanned target gives its first ones, the
    rest stay unrolled and unused; one with fewer is left unrolled). ``init_from`` uses it between runs of
    different ``config.scan_layers``."""
    if not (isinstance(source, dict) and isinstance(target, dict)):
        return source
    source = dict(source)
    t_stems = {m.group(1) for k in target if (m := _UNROLLED.match(k))}
    s_stems = {m.group(1) for k in source if (m := _UNROLLED.match(k))}
    if SCANNED in target and SCANNED not in source and len(s_stems) == 1:
        count = jax.tree_util.tree_leaves(target[SCANNED])[0].shape[0]
        stem = s_stems.pop()
        if all(f"{stem}{i}" in source for i in range(count)):
            source = _stack_node(source, stem, count)
    elif SCANNED in source and SCANNED not in target and len(t_stems) == 1:
        source = _unstack_node(source, t_stems.pop())
    for k in source:
        if k in target:
            source[k] = relayout_like(source[k], target[k])
    return source
