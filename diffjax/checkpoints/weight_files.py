"""Weight-file readers that never trust the file: safetensors, torch ``.bin`` / ``.pth`` without torch, msgpack.

Every reader here validates the whole file's structure *before* it allocates or views anything, and
any problem -- truncated, empty, garbage, a header or offset outside the file, overlapping tensors, a
tensor view beyond its storage, a pickle that needs code diffjax does not run -- ends in ONE
``CheckpointFormatError`` whose message starts with the file's path and says what is wrong. No
``struct.error``, ``MemoryError``, ``EOFError``, ``KeyError`` or "cannot reshape" leaves a reader.

Allocation is bounded by the file: a safetensors header is at most ``_MAX_HEADER`` bytes and no more
than the file holds; a tensor never has more elements than its storage (so a crafted stride or size
cannot make numpy copy gigabytes out of a few bytes); zip records must be stored uncompressed, as
``torch.save`` writes them (no decompression bombs).

Formats:

* safetensors (``read_safetensors`` / ``write_safetensors``): numpy memory map; bf16 / fp8 via
  ``ml_dtypes``. Header checked: length, JSON object without duplicate keys, known dtypes, shapes of
  non-negative ints, every ``data_offsets`` pair inside the data section, ``end - begin`` equal to
  dtype size x shape, no two tensors overlapping, every data byte indexed (as the format requires).
* torch pickles (``read_torch_bin``, ``load_torch_pickle``): in ``checkpoints/torch_pickle.py``,
  re-exported here.
* HF-Flax msgpack (``read_flax_msgpack``): kernels transposed back to the PyTorch layout.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from diffjax.checkpoints.errors import CheckpointFormatError, is_int as _is_int
from diffjax.checkpoints.torch_pickle import load_torch_pickle, read_torch_bin  # noqa: F401 (one home for the readers)
from diffjax.checkpoints.trees import flatten_tree

__all__ = ["CheckpointFormatError", "read_safetensors", "write_safetensors", "read_torch_bin",
           "load_torch_pickle", "read_flax_msgpack", "check_float_dtypes"]

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors spec's own limit on the JSON header


def is_float_dtype(dtype) -> bool:
    """True for numpy floats and the ml_dtypes floats (bf16, fp8), which numpy does not call floating."""
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype in _ML_FLOATS


_ML_FLOATS = {np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2)}


def check_float_dtypes(tensors: Mapping[str, Any], keys, source: str) -> None:
    """Raises ONE ``CheckpointFormatError`` naming every key in ``keys`` whose tensor is not a float.

    Weights are floats; an integer or bool tensor where a weight is expected means the file holds
    something else (quantised data, token ids, a mask) and would otherwise be cast silently.
    """
    bad = [f"{k} ({np.dtype(tensors[k].dtype)}, shape {list(tensors[k].shape)})"
           for k in sorted(keys) if k in tensors and not is_float_dtype(tensors[k].dtype)]
    if bad:
        raise CheckpointFormatError(
            source, f"{len(bad)} weight(s) have a non-float dtype where the model expects floats: "
            + "; ".join(bad) + ". diffjax reads float weights (f32/f16/bf16/f64); quantised or integer "
            "tensors are not converted. Use the float checkpoint of this model.")


# ----------------------------------------------------------------------------- safetensors

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _safetensors_layout(file: str) -> tuple[int, dict[str, tuple[Any, tuple[int, ...], int, int]]]:
    """Validated header of a safetensors file -> (data start, {key: (dtype, shape, begin, end)})."""
    size = os.path.getsize(file)
    if size < 8:
        raise CheckpointFormatError(file, f"not a safetensors file: {size} bytes, shorter than the 8-byte header length.")
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, _MAX_HEADER):
            raise CheckpointFormatError(
                file, f"not a valid safetensors file: the header claims {n} bytes but the file has {size - 8} "
                f"after the length field (limit {_MAX_HEADER}); the file is truncated or not safetensors.")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointFormatError(file, f"not a valid safetensors file: the {n}-byte header is not valid JSON ({e}).") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(file, f"not a valid safetensors file: the header is a JSON {type(header).__name__}, not an object.")
    start, data_len = 8 + n, size - 8 - n
    layout, problems = {}, []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict):
                problems.append(f"__metadata__ is a {type(info).__name__}, not an object")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            problems.append(f"tensor {key!r}: entry must be an object with exactly dtype, shape, data_offsets; found {info!r:.100}")
            continue
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dt, str) or dt not in _ST_DTYPES:
            problems.append(f"tensor {key!r}: dtype {dt!r:.40} is not one diffjax reads ({sorted(_ST_DTYPES)})")
            continue
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            problems.append(f"tensor {key!r}: shape {shape!r:.80} is not a list of non-negative integers")
            continue
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            problems.append(f"tensor {key!r}: data_offsets {offs!r:.80} is not a pair of integers")
            continue
        b, e = offs
        nbytes = math.prod(shape) * np.dtype(_ST_DTYPES[dt]).itemsize
        if not 0 <= b <= e <= data_len:
            problems.append(f"tensor {key!r}: data_offsets [{b}, {e}] are outside the {data_len}-byte data section")
        elif e - b != nbytes:
            problems.append(f"tensor {key!r}: data_offsets [{b}, {e}] span {e - b} bytes but {dt} x {shape} needs {nbytes}")
        else:
            layout[key] = (np.dtype(_ST_DTYPES[dt]), tuple(shape), b, e)
    spans = sorted((b, e, k) for k, (_, _, b, e) in layout.items() if e > b)
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            problems.append(f"tensors {k0!r} [{b0}, {e0}] and {k1!r} [{b1}, {e1}] overlap")
    covered = sum(e - b for b, e, _ in spans)
    if not problems and covered != data_len:  # the format indexes every data byte (as safetensors' own reader checks)
        problems.append(f"the tensors cover {covered} of the {data_len} data bytes (a wrong header length, holes "
                        "or trailing bytes)")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise CheckpointFormatError(file, "corrupt safetensors header: " + "; ".join(problems[:10]) + more + ".")
    return start, layout


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as numpy arrays (memory-mapped, read-only), header validated."""
    file = os.fspath(file)
    start, layout = _safetensors_layout(file)
    if not layout:
        return {}
    buf = np.memmap(file, dtype=np.uint8, mode="r")
    return {key: buf[start + b: start + e].view(dt).reshape(shape) for key, (dt, shape, b, e) in layout.items()}


def write_safetensors(tensors: Mapping[str, np.ndarray], file: str, metadata: Mapping[str, str] | None = None) -> None:
    """Writes numpy arrays (incl. bf16) as a safetensors file (``format: pt`` so transformers opens it)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = []
    for key in sorted(tensors):
        a = np.array(tensors[key], order="C", copy=True)
        if a.dtype not in _ST_NAMES:
            raise ValueError(f"cannot write {key!r}: dtype {a.dtype} has no safetensors name")
        header[key] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for a in arrays:
            f.write(a.tobytes())


# ----------------------------------------------------------------------------- flax msgpack


def read_flax_msgpack(file: str) -> dict[str, np.ndarray]:
    """An HF-Flax ``flax_model.msgpack`` converted to PyTorch key names and layouts.

    ``a/b/kernel`` [in, out] -> ``a.b.weight`` [out, in]; ``embedding`` and LayerNorm ``scale`` ->
    ``weight``. Layer lists (``layer/0``) become ``layer.0`` as in PyTorch.
    """
    from flax import serialization  # noqa: PLC0415

    file = os.fspath(file)
    with open(file, "rb") as f:
        data = f.read()
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:  # noqa: BLE001  (msgpack raises many types on garbage; all mean "corrupt")
        raise CheckpointFormatError(file, f"not a readable flax msgpack file ({type(e).__name__}: {str(e)[:200]}).") from None
    if not isinstance(tree, dict):
        raise CheckpointFormatError(file, f"a flax msgpack checkpoint holds a dict of parameters; found a {type(tree).__name__}.")
    if "params" in tree and len(tree) == 1:
        tree = tree["params"]
    out = {}
    for path, v in flatten_tree(tree, separator=None).items():
        if not isinstance(v, np.ndarray):
            raise CheckpointFormatError(file, f"{'/'.join(map(str, path))} is a {type(v).__name__}, not an array.")
        *head, last = path
        if last == "kernel":
            if v.ndim == 2:
                v = v.T
            elif v.ndim == 4:  # conv HWIO -> OIHW
                v = v.transpose(3, 2, 0, 1)
            last = "weight"
        elif last in ("embedding", "scale"):
            last = "weight"
        out[".".join([*head, last])] = v
    return out
