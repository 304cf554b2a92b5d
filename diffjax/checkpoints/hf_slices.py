"""Per-slice readers of a local Hugging Face safetensors model dir or a ``.gguf`` file, for loading straight
into shards.

``leaf_readers(path)`` -> ``{param path: LeafReader}``: for every param of the model the dir's
``config.json`` (a GGUF's metadata) builds, its shape and ``read(index)``, which returns only ``param[index]`` (``index``: a
tuple of slices over the *Flax* shape, as ``jax.make_array_from_callback`` passes it). The weights are the
validated, memory-mapped views of ``weight_files.read_safetensors`` (single file or sharded index), so a
read touches only the bytes of its slice; a GGUF's are ``gguf.GGUFTensor``s, which dequantise only the rows a
slice asks for. The HF key and the transposition of each param come from the
family's own ``params_to_hf`` run on path markers (no second key table), after the family's
``canonicalize_keys`` and the same strict key / shape check as ``hf.load_hf_checkpoint``.

``stacked_readers(readers, shapes)`` serves a run with a scanned stack (``config.scan_layers``): the reader
of ``.../layers/x`` of shape ``[L, ...]`` reads, for the layers its slice asks for, the slice of each
unrolled ``.../layer_<i>/x`` (the layout ``models.scan.stack_layers`` makes of a whole tree).

Returns None where per-slice reads do not apply (an HF dir without safetensors weights, or a family whose
``params_to_hf`` does more than pick and transpose tensors): the caller then reads the whole model.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from diffjax.checkpoints import hf
from diffjax.runtime import path_str

__all__ = ["LeafReader", "leaf_readers", "read_slice", "stacked_readers"]


@dataclasses.dataclass(frozen=True)
class LeafReader:
    """One param: ``shape`` (Flax layout) and ``read(index) -> np.ndarray`` of ``param[index]``."""

    hf_key: str
    shape: tuple[int, ...]
    read: Callable[[tuple], np.ndarray]


class _Marker:
    """Stands for the param at ``path`` inside ``params_to_hf``; ``.T`` is recorded."""

    def __init__(self, path: str, shape: tuple[int, ...], transposed: bool = False):
        self.path, self.shape, self.transposed = path, shape, transposed

    @property
    def T(self):  # noqa: N802 (numpy's name)
        return _Marker(self.path, self.shape[::-1], not self.transposed)


def read_slice(tensor: np.ndarray, index: tuple, transposed: bool) -> np.ndarray:
    """``param[index]`` of a param stored as ``tensor`` (its transpose when ``transposed``), reading only
    that slice of the (memory-mapped) tensor."""
    index = tuple(index) + (slice(None),) * (tensor.ndim - len(tuple(index)))
    if transposed:
        return np.ascontiguousarray(np.asarray(tensor[index[::-1]]).T)
    return np.array(tensor[index])


def _safetensors(path: str) -> dict[str, np.ndarray] | None:
    """{key: memory-mapped array} of the dir's safetensors weights (None when it has none)."""
    if os.path.isfile(os.path.join(path, "model.safetensors")) or os.path.isfile(
            os.path.join(path, "model.safetensors.index.json")):
        tensors, fmt = hf.read_hf_weights(path)
        return tensors if fmt.startswith("safetensors") else None
    return None


def _source(path: str):
    """``(lazy tensors by HF key, config dict, family module, description)`` of an HF safetensors dir or a
    ``.gguf`` file (its tensors dequantised per slice, ``gguf.GGUFTensor``); None for other weight files."""
    from diffjax.checkpoints.pretrained import is_gguf

    if is_gguf(path):
        from diffjax.checkpoints import gguf, hf_llama

        tensors, hf_config = gguf.gguf_tensors(path)
        return tensors, hf_config, hf_llama, f"{path} (gguf)"
    tensors = _safetensors(path)
    if tensors is None:
        return None
    hf_config = hf.read_hf_config(path)
    family = hf.family_module(hf_config.get("model_type"))
    hf.check_hf_config(hf_config, getattr(family, "CONFIG_FIELDS", {}), os.path.join(path, "config.json"))
    return tensors, hf_config, family, f"{path} (safetensors)"


def leaf_readers(path: str, *, ignore_unexpected: Sequence[str] = (), init_missing: Sequence[str] = (),
                 **overrides) -> dict[str, LeafReader] | None:
    """``{'/'-joined param path: LeafReader}`` of the HF dir or ``.gguf`` file ``path`` (module docstring);
    ``overrides``, ``ignore_unexpected`` and ``init_missing`` as ``load_hf_checkpoint``'s (a param whose key
    ``init_missing`` lets the file lack gets no reader: it keeps the run's fresh init). Raises
    ``CheckpointMismatchError`` as the full load would."""
    opened = _source(path)
    if opened is None:
        return None
    tensors, hf_config, family, source = opened
    model = family.model_from_hf_config(hf_config, **overrides)
    canon = getattr(family, "canonicalize_keys", None)
    if canon is not None:
        tensors = canon(tensors, model)
    expected = hf.expected_hf_shapes(family, model)
    hf.check_tensors(tensors, expected, ignored_patterns=tuple(family.IGNORED_KEYS) + tuple(ignore_unexpected),
                     allowed_missing=tuple(init_missing), model_type=hf_config.get("model_type"), source=source)
    hf.check_float_dtypes(tensors, [k for k, (_, dt) in expected.items() if hf.is_float_dtype(dt)], source)
    abstract = jax.eval_shape(lambda: family.init_params(model, jax.random.key(0)))
    markers = jax.tree_util.tree_map_with_path(lambda p, x: _Marker(path_str(p), tuple(x.shape)), abstract)
    try:
        by_key: dict[str, Any] = family.params_to_hf(markers, model)
    except Exception:  # noqa: BLE001 - a family that computes on its params: no per-slice map
        return None
    if not all(isinstance(m, _Marker) for m in by_key.values()):
        return None
    out = {}
    for key, m in by_key.items():
        if key not in tensors:  # allowed by init_missing
            continue
        tensor = tensors[key]

        def read(index, tensor=tensor, transposed=m.transposed):
            return read_slice(tensor, index, transposed)

        shape = tuple(tensor.shape[::-1] if m.transposed else tensor.shape)
        out[m.path] = LeafReader(key, shape, read)
    return out


def stacked_readers(readers: dict[str, LeafReader], shapes: dict[str, tuple]) -> dict[str, LeafReader]:
    """``readers`` (unrolled paths) with, for every scanned param of ``shapes`` (``{path: shape}`` of the
    run's params; ``.../layers/...`` of shape ``[L, ...]``), a reader stacking layers 0 .. L-1 of the
    family's unrolled paths; those unrolled readers are then dropped. Unscanned paths are left as they are."""
    from diffjax.models.scan import unrolled_paths

    out = dict(readers)
    for path, shape in shapes.items():
        if path in readers or not shape:
            continue
        for paths in unrolled_paths(path, shape[0]).values():
            layers = [readers.get(p) for p in paths]
            if paths and all(r is not None for r in layers):
                for p in paths:
                    out.pop(p)

                def read(index, layers=tuple(layers)):
                    index = tuple(index) or (slice(None),)
                    return np.stack([layers[i].read(index[1:]) for i in range(len(layers))[index[0]]])

                out[path] = LeafReader(f"{layers[0].hf_key} .. (x{len(layers)})", (len(layers),) + layers[0].shape,
                                       read)
                break
    return out
