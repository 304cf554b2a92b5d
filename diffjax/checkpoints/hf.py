"""Local Hugging Face model directory <-> (Flax module, params), strictly.

``load_hf_checkpoint(path)`` reads ``config.json``, picks the model family from its
``model_type``, builds the Flax module, reads the weights (``model.safetensors``, sharded
safetensors with ``model.safetensors.index.json``, ``pytorch_model.bin`` (+ sharded index) read
*without* torch, or ``flax_model.msgpack``) and converts them. The import is strict: the expected
HF key -> shape map is computed from the family's ``params_to_hf`` on abstract params
(``jax.eval_shape``, no memory) and compared with the file; every missing, unexpected and
mis-shaped key is listed in ONE ``CheckpointMismatchError``. Nothing is re-initialised unless the
caller names it in ``init_missing`` (then it is logged and reported).

``save_hf_checkpoint(model, params, path)`` writes ``config.json`` + ``model.safetensors`` that
``transformers.AutoModel*.from_pretrained`` opens.

Family-module contract
----------------------
A family module (``diffjax/checkpoints/hf_<family>.py``) is registered in ``FAMILIES`` below by
the ``model_type`` strings it serves and imported lazily. It defines:

* ``MODEL_TYPES: tuple[str, ...]`` -- the ``config.json`` ``model_type`` values it serves.
* ``model_from_hf_config(hf_config: dict, dtype, **overrides) -> flax.linen.Module`` -- builds the
  module from the parsed ``config.json``; ``dtype`` is the compute *and* parameter dtype;
  ``overrides`` are family options (e.g. ``mlm_head=True``) or config fields to replace. Unknown
  override names must raise ``TypeError`` naming the accepted ones.
* ``init_params(model, rng) -> params`` -- fresh params (``model.init(...)["params"]`` with
  dummy inputs). Must work under ``jax.eval_shape``.
* ``hf_to_params(tensors: dict[str, np.ndarray], model) -> params`` -- converts the (already
  checked, canonical-named) HF tensors into the params pytree (the ``"params"`` collection's
  content, without the ``{"params": ...}`` wrapper). May ignore extra keys.
* ``params_to_hf(params, model) -> dict[str, array]`` -- the inverse, using HF's PyTorch key names
  and layouts (``weight`` of a Linear is ``[out, in]``). Must be traceable: only jnp / array
  methods (``.T``, ``.reshape``, ``jnp.concatenate``), no ``np.asarray``, because the strict
  check runs it under ``jax.eval_shape``.
* ``hf_config_from_model(model) -> dict`` -- a ``config.json`` dict (with ``model_type`` and
  ``architectures``) that transformers accepts for the saved weights.
* ``MODEL_CLASSES: tuple[type, ...]`` -- the Flax module classes it builds (``save_hf_checkpoint``
  finds the family of a model by ``isinstance``).
* ``IGNORED_KEYS: tuple[str, ...]`` -- regexes (``re.search``) of file keys that may be present
  without being expected: non-persistent buffers (``position_ids``), rotary caches, and the tied
  output embedding (``lm_head.weight`` when tied). A key that *is* expected is never ignored.
* Optional ``canonicalize_keys(tensors: dict, model) -> dict`` -- renames file keys to the names
  ``params_to_hf`` uses (e.g. adds/strips the ``bert.`` prefix of a base-model checkpoint).
  Called before the strict check.

Formats read: safetensors via a small numpy reader here (bf16 through ``ml_dtypes``), torch
zip-pickle ``.bin`` via a restricted unpickler that rebuilds tensors from their storages with
numpy (torch is used only as a fallback for the pre-1.6 legacy format, and only if installed),
and HF-Flax ``msgpack`` (kernels transposed back to PyTorch layout).
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import logging
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from diffjax.checkpoints.errors import CheckpointMismatchError  # noqa: F401  (re-exported)
from diffjax.checkpoints.trees import flatten_tree

log = logging.getLogger(__name__)

# model_type -> family module (imported lazily).
FAMILIES: dict[str, str] = {
    "bert": "diffjax.checkpoints.hf_bert",
    "roberta": "diffjax.checkpoints.hf_bert",
    "xlm-roberta": "diffjax.checkpoints.hf_bert",
    "t5": "diffjax.checkpoints.hf_t5",
    "mt5": "diffjax.checkpoints.hf_t5",
    "umt5": "diffjax.checkpoints.hf_t5",
    "llama": "diffjax.checkpoints.hf_llama",
    "qwen2": "diffjax.checkpoints.hf_llama",
    "mistral": "diffjax.checkpoints.hf_llama",
}

# Substrings of HF key names that identify a family (used only to word the wrong-family error).
_FAMILY_SIGNATURES = (
    ("BERT/RoBERTa/XLM-R", re.compile(r"(^|\.)encoder\.layer\.\d+\.attention\.self\.query\.")),
    ("T5/mT5", re.compile(r"(^|\.)block\.\d+\.layer\.\d+\.")),
    ("Llama/Qwen2/Mistral", re.compile(r"(^|\.)layers\.\d+\.self_attn\.q_proj\.")),
)


@dataclasses.dataclass
class LoadReport:
    """What ``load_hf_checkpoint`` did besides the plain 1:1 import."""

    path: str
    weights_format: str
    model_type: str
    fresh: list[str]  # HF keys initialised fresh because init_missing named them
    ignored: list[str]  # file keys dropped because they match the family's IGNORED_KEYS


# ----------------------------------------------------------------------------- family registry


def family_module(model_type: str):
    """The family module serving ``model_type`` (imported on first use)."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"config.json has model_type={model_type!r}, which diffjax cannot load; "
            f"supported: {sorted(FAMILIES)}."
        )
    try:
        return importlib.import_module(FAMILIES[model_type])
    except ImportError as e:  # the family file may not exist yet
        raise ImportError(f"model_type {model_type!r} needs {FAMILIES[model_type]}, which failed to import: {e}") from e


def read_hf_config(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path!r} is not a Hugging Face model directory: no config.json there.")
    with open(cfg_path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- safetensors

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as numpy arrays (memory-mapped, read-only)."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    buf = np.memmap(file, dtype=np.uint8, mode="r")
    start = 8 + n
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{file}: tensor {key!r} has dtype {info['dtype']} which diffjax cannot read.")
        b, e = info["data_offsets"]
        arr = buf[start + b : start + e].view(_ST_DTYPES[info["dtype"]])
        out[key] = arr.reshape(info["shape"])
    return out


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


# ----------------------------------------------------------------------------- torch .bin without torch

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[storage_offset])
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view)  # contiguous copy


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


class _UnsupportedPickle(Exception):
    pass


class _TorchZipUnpickler(pickle.Unpickler):
    """Rebuilds a torch state_dict as numpy arrays; refuses every global it does not know."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, fileobj, zf: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(fileobj)
        self._zf, self._prefix, self._byteorder = zf, prefix, byteorder
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise _UnsupportedPickle(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise _UnsupportedPickle(f"persistent id {pid!r:.80}")
        _, stype, key, _location, _numel = pid
        if key not in self._storages:
            raw = self._zf.read(f"{self._prefix}/data/{key}")
            dt = stype.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            self._storages[key] = np.frombuffer(raw, dtype=dt).astype(stype.dtype, copy=False)
        return self._storages[key]


def read_torch_bin(file: str) -> dict[str, np.ndarray]:
    """A ``torch.save``-d state_dict as numpy arrays, without torch for the zip format (torch>=1.6).

    Falls back to ``torch.load(weights_only=True)`` (if torch is installed) for the legacy format or
    unusual pickles; otherwise says how to convert the file.
    """
    reason = "not a zip file (legacy torch format)"
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if pkl:
                prefix = pkl[0][: -len("/data.pkl")] if "/" in pkl[0] else ""
                bo_name = f"{prefix}/byteorder" if prefix else "byteorder"
                byteorder = zf.read(bo_name).decode().strip() if bo_name in zf.namelist() else "little"
                try:
                    with zf.open(pkl[0]) as f:
                        obj = _TorchZipUnpickler(f, zf, prefix, byteorder).load()
                    if isinstance(obj, Mapping) and all(isinstance(v, np.ndarray) for v in obj.values()):
                        return dict(obj)
                    reason = "the pickle is not a flat state_dict of tensors"
                except _UnsupportedPickle as e:
                    reason = f"the pickle uses {e}, which the numpy reader does not rebuild"
            else:
                reason = "zip file without data.pkl"
    try:
        import torch  # noqa: PLC0415  (one-time conversion fallback only)
    except ImportError:
        raise ValueError(
            f"{file}: cannot read this PyTorch file without torch ({reason}). Install torch once and "
            "re-save it as safetensors (transformers' save_pretrained) or pass a safetensors directory."
        ) from None
    log.warning("%s: %s; falling back to torch.load(weights_only=True)", file, reason)
    sd = torch.load(file, map_location="cpu", weights_only=True)
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        out[k] = v.float().numpy().astype(ml_dtypes.bfloat16) if v.dtype == torch.bfloat16 else v.numpy()
    return out


# ----------------------------------------------------------------------------- flax msgpack


def read_flax_msgpack(file: str) -> dict[str, np.ndarray]:
    """An HF-Flax ``flax_model.msgpack`` converted to PyTorch key names and layouts.

    ``a/b/kernel`` [in, out] -> ``a.b.weight`` [out, in]; ``embedding`` and LayerNorm ``scale`` ->
    ``weight``. Layer lists (``layer/0``) become ``layer.0`` as in PyTorch.
    """
    from flax import serialization  # noqa: PLC0415

    with open(file, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    if "params" in tree and len(tree) == 1:
        tree = tree["params"]
    out = {}
    for path, v in flatten_tree(tree, separator=None).items():
        v = np.asarray(v)
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


# ----------------------------------------------------------------------------- weights in a dir


def read_hf_weights(path: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of an HF model dir -> ({key: array}, format name). Preference: safetensors, bin, msgpack."""

    def sharded(index_name, reader):
        with open(os.path.join(path, index_name)) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(reader(os.path.join(path, shard)))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointMismatchError(f"{index_name} lists keys absent from their shard files: {missing[:20]}")
        return tensors

    candidates = [
        ("model.safetensors", "safetensors", read_safetensors),
        ("model.safetensors.index.json", "safetensors (sharded)", lambda _: sharded("model.safetensors.index.json", read_safetensors)),
        ("pytorch_model.bin", "pytorch_model.bin", read_torch_bin),
        ("pytorch_model.bin.index.json", "pytorch_model.bin (sharded)", lambda _: sharded("pytorch_model.bin.index.json", read_torch_bin)),
        ("flax_model.msgpack", "flax msgpack", read_flax_msgpack),
    ]
    for name, fmt, reader in candidates:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            return reader(file), fmt
    raise FileNotFoundError(
        f"{path!r} has config.json but no weights: expected one of {[c[0] for c in candidates]}; "
        f"found {sorted(os.listdir(path))}."
    )


# ----------------------------------------------------------------------------- strict check


def expected_hf_shapes(family, model) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{HF key: (shape, dtype)} the model needs, computed on abstract params (no memory)."""
    abstract = jax.eval_shape(lambda: family.params_to_hf(family.init_params(model, jax.random.key(0)), model))
    return {k: (tuple(v.shape), v.dtype) for k, v in abstract.items()}


def _guess_family(keys: Iterable[str]) -> str | None:
    keys = list(keys)
    for name, pat in _FAMILY_SIGNATURES:
        if any(pat.search(k) for k in keys):
            return name
    return None


def check_tensors(
    tensors: Mapping[str, Any],
    expected: Mapping[str, tuple[tuple[int, ...], Any]],
    *,
    ignored_patterns: Sequence[str] = (),
    allowed_missing: Sequence[str] = (),
    model_type: str = "?",
    source: str = "checkpoint",
) -> tuple[list[str], list[str]]:
    """Strict comparison. Returns (ignored file keys, allowed-missing keys); raises ONE error otherwise.

    The error lists every missing key (with its expected shape), every unexpected key (with its
    shape) and every mis-shaped key (expected vs found), and says when the weights look like a
    different family than ``model_type``.
    """
    missing, allowed, unexpected, ignored, misshaped = [], [], [], [], []
    for k, (shape, _) in expected.items():
        if k not in tensors:
            (allowed if any(re.search(p, k) for p in allowed_missing) else missing).append(k)
        elif tuple(tensors[k].shape) != shape:
            misshaped.append(k)
    for k in tensors:
        if k not in expected:
            (ignored if any(re.search(p, k) for p in ignored_patterns) else unexpected).append(k)
    if missing or unexpected or misshaped:
        lines = [f"{source} does not match the {model_type!r} model built from its config.json:"]
        n_found = len(expected) - len(missing) - len(allowed)
        if expected and n_found < len(expected) / 2:
            guess = _guess_family(unexpected)
            lines.append(
                f"  WRONG FAMILY? only {n_found} of {len(expected)} expected keys are present"
                + (f"; the file looks like a {guess} checkpoint" if guess else "")
                + ". Check config.json's model_type / that config and weights belong together."
            )
        if missing:
            lines.append(f"  missing ({len(missing)}): the model needs these keys [expected shape]:")
            lines += [f"    {k} {list(expected[k][0])}" for k in sorted(missing)]
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): the file has these keys the model does not use [shape]:")
            lines += [f"    {k} {list(tensors[k].shape)}" for k in sorted(unexpected)]
        if misshaped:
            lines.append(f"  wrong shape ({len(misshaped)}): key: expected [shape], found [shape]:")
            lines += [f"    {k}: expected {list(expected[k][0])}, found {list(tensors[k].shape)}" for k in sorted(misshaped)]
        hint = ""
        if missing:
            groups = sorted({re.escape(".".join(k.split(".")[:2])) + r"\." for k in missing})
            hint = f" (here e.g. init_missing={groups[:6]!r})"
        lines.append(
            "  To fix: use the config.json that belongs to these weights, or pass overrides (e.g. a head "
            f"option) so the model matches; keys the model may start fresh go in init_missing=[regex, ...]{hint}; "
            "file keys to drop on purpose go in ignore_unexpected=[regex, ...]."
        )
        raise CheckpointMismatchError("\n".join(lines))
    return ignored, allowed


# ----------------------------------------------------------------------------- public API


def _cast(x: np.ndarray, dtype) -> np.ndarray:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) or x.dtype == ml_dtypes.bfloat16:
        return x.astype(dtype, copy=False)
    return x


def load_hf_checkpoint(
    path: str,
    *,
    dtype=jnp.float32,
    init_missing: str | Sequence[str] = (),
    ignore_unexpected: str | Sequence[str] = (),
    rng: jax.Array | None = None,
    return_report: bool = False,
    **overrides,
):
    """Loads a local HF model dir -> ``(model, params)`` (or ``(model, params, LoadReport)``).

    Args:
      path: directory with ``config.json`` and weights (see ``read_hf_weights``).
      dtype: compute and parameter dtype (float weights are cast to it; ``jnp.bfloat16`` gives bf16 params).
      init_missing: regexes (``re.search`` on HF key names) of keys that may be absent from the file;
        those are initialised fresh (``family.init_params(model, rng)``), logged at WARNING and listed
        in the report. E.g. ``init_missing=[r"cls\\.predictions\\."]`` for an MLM head on a BertModel.
      ignore_unexpected: regexes (``re.search``) of file keys to drop on purpose (e.g. ``r"^cls\\."`` to
        take only the encoder of an MLM checkpoint); listed in the report's ``ignored``.
      rng: key for the fresh init (default ``jax.random.key(0)``); only used with ``init_missing``.
      return_report: also return a ``LoadReport`` (fresh / ignored keys, format).
      **overrides: family options / config fields, passed to ``model_from_hf_config``.

    Raises:
      CheckpointMismatchError listing every missing / unexpected / mis-shaped key at once.
    """
    hf_config = read_hf_config(path)
    model_type = hf_config.get("model_type")
    if model_type is None:
        raise ValueError(f"{path}/config.json has no model_type; supported: {sorted(FAMILIES)}.")
    family = family_module(model_type)
    model = family.model_from_hf_config(hf_config, dtype, **overrides)
    tensors, fmt = read_hf_weights(path)
    canon = getattr(family, "canonicalize_keys", None)
    if canon is not None:
        tensors = canon(tensors, model)
    expected = expected_hf_shapes(family, model)
    if isinstance(init_missing, str):
        init_missing = (init_missing,)
    if isinstance(ignore_unexpected, str):
        ignore_unexpected = (ignore_unexpected,)
    ignored, fresh = check_tensors(
        tensors,
        expected,
        ignored_patterns=tuple(family.IGNORED_KEYS) + tuple(ignore_unexpected),
        allowed_missing=tuple(init_missing),
        model_type=model_type,
        source=f"{path} ({fmt})",
    )
    tensors = {k: v for k, v in tensors.items() if k in expected}
    if fresh:
        key = jax.random.key(0) if rng is None else rng
        # jit so XLA drops the init of every parameter that is not fresh (a big encoder costs nothing).
        init_hf = jax.jit(lambda r: {k: family.params_to_hf(family.init_params(model, r), model)[k] for k in fresh})(key)
        for k in fresh:
            tensors[k] = np.asarray(init_hf[k])
        log.warning("%s: initialised fresh (absent from the checkpoint, allowed by init_missing): %s", path, fresh)
    tensors = {k: _cast(v, dtype) for k, v in tensors.items()}
    params = family.hf_to_params(tensors, model)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.asarray(x), params)
    if return_report:
        return model, params, LoadReport(path, fmt, model_type, sorted(fresh), sorted(ignored))
    return model, params


def save_hf_checkpoint(model, params, path: str) -> None:
    """Writes ``config.json`` + ``model.safetensors`` so ``transformers.AutoModel*`` opens ``path``.

    ``params`` is the params pytree (a ``{"params": ...}`` wrapper is accepted too). Weights keep
    their dtype (bf16 stays bf16); ``config.json`` records it as ``torch_dtype`` / ``dtype``.
    """
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    family = _family_of_model(model)
    hf_config = family.hf_config_from_model(model)
    tensors = {k: np.asarray(jax.device_get(v)) for k, v in family.params_to_hf(params, model).items()}
    dts = {str(v.dtype) for v in tensors.values() if np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16}
    if len(dts) == 1:
        hf_config.setdefault("torch_dtype", dts.pop())
        hf_config.setdefault("dtype", hf_config["torch_dtype"])
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    write_safetensors(tensors, os.path.join(path, "model.safetensors"), {"format": "pt"})


def _family_of_model(model):
    mod = type(model).__module__
    for fam in sorted(set(FAMILIES.values())):
        try:
            m = importlib.import_module(fam)
        except ImportError:
            continue
        if getattr(m, "MODEL_CLASSES", None) and isinstance(model, tuple(m.MODEL_CLASSES)):
            return m
    raise TypeError(
        f"no HF family module claims {type(model).__name__} (module {mod}); a family module must set "
        "MODEL_CLASSES = (ModelClass, ...) to be saved with save_hf_checkpoint."
    )


def load_tokenizer(path: str, **kwargs):
    """``transformers.AutoTokenizer.from_pretrained(path)`` (local dir, no network). Use ``return_tensors="np"``."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(path, **kwargs)
