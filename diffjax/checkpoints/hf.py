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

* Optional ``CONFIG_FIELDS: dict[str, str]`` -- ``config.json`` field -> kind (see ``CONFIG_KINDS``);
  a kind ending in ``!`` is required. ``load_hf_checkpoint`` checks the parsed config against it before
  ``model_from_hf_config`` runs, so a missing field or a wrong type is one ``CheckpointFormatError``
  naming the file and every bad field (not a ``KeyError`` / ``TypeError`` from deep inside).

Formats read (``diffjax.checkpoints.weight_files``, which validates every file before it views or
allocates anything): safetensors (bf16 through ``ml_dtypes``), torch ``.bin`` (zip and legacy
formats) via a restricted unpickler without torch, and HF-Flax ``msgpack``. An unreadable, truncated or
corrupt weight file, a shard path that leaves the model directory and a malformed ``config.json`` are
each one ``CheckpointFormatError`` naming the file. Integer / bool tensors where the model expects float
weights are refused by name (``check_float_dtypes``) rather than cast.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from diffjax.checkpoints.errors import CheckpointFormatError, CheckpointMismatchError  # noqa: F401  (re-exported)
from diffjax.checkpoints.weight_files import (  # noqa: F401  (re-exported: the readers' public home was here)
    check_float_dtypes,
    is_float_dtype,
    read_flax_msgpack,
    read_safetensors,
    read_torch_bin,
    write_safetensors,
)

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


def read_json_object(file: str, what: str) -> dict:
    """A JSON file that must hold an object -> dict; ``CheckpointFormatError`` naming the file otherwise."""
    try:
        with open(file, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointFormatError(file, f"{what} is not valid JSON ({e}).") from None
    if not isinstance(obj, dict):
        raise CheckpointFormatError(file, f"{what} must be a JSON object; found a JSON {type(obj).__name__}.")
    return obj


def read_hf_config(path: str) -> dict:
    """``path/config.json`` as a dict (a JSON object with a string ``model_type``), or one clear error.
    ``preset:NAME``: that preset's dict (``checkpoints/presets.py``)."""
    from diffjax.checkpoints.presets import is_preset, preset_config

    if is_preset(path):
        return preset_config(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path!r} is not a Hugging Face model directory: no config.json there.")
    return read_json_object(cfg_path, "config.json")


# config.json kind -> (check, description). A trailing "!" in a family's CONFIG_FIELDS marks a required field.
def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


CONFIG_KINDS = {
    "size": (lambda v: _int(v) and v > 0, "a positive integer"),
    "size?": (lambda v: v is None or (_int(v) and v > 0), "a positive integer or null"),
    "count": (lambda v: _int(v) and v >= 0, "a non-negative integer"),
    "count?": (lambda v: v is None or (_int(v) and v >= 0), "a non-negative integer or null"),
    "id?": (lambda v: v is None or _int(v) or (isinstance(v, list) and all(_int(x) for x in v)),
            "a token id (integer), a list of them, or null"),
    "number": (lambda v: (_int(v) or isinstance(v, float)) and v == v, "a number"),
    "number?": (lambda v: v is None or ((_int(v) or isinstance(v, float)) and v == v), "a number or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "bool?": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str?": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "strs?": (lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
              "a list of strings or null"),
    "dict?": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}


def check_hf_config(hf_config: Any, fields: Mapping[str, str], source: str) -> None:
    """Raises ONE ``CheckpointFormatError`` (file ``source``) naming every missing / mistyped field.

    ``fields``: name -> kind in ``CONFIG_KINDS``, ``"!"``-suffixed when required. Fields not listed are
    not checked (config.json carries many the model does not read).
    """
    if not isinstance(hf_config, Mapping):
        raise CheckpointFormatError(source, f"the config must be a JSON object; found a {type(hf_config).__name__}.")
    problems = []
    for name, kind in fields.items():
        required = kind.endswith("!")
        check, desc = CONFIG_KINDS[kind.rstrip("!")]
        if name not in hf_config:
            if required:
                problems.append(f"required field {name!r} is missing ({desc})")
        elif not check(hf_config[name]):
            problems.append(f"field {name!r} must be {desc}; found {hf_config[name]!r:.60}")
    if problems:
        raise CheckpointFormatError(source, "malformed config: " + "; ".join(problems) + ".")


# ----------------------------------------------------------------------------- weights in a dir


def read_hf_weights(path: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of an HF model dir -> ({key: array}, format name). Preference: safetensors, bin, msgpack."""

    def sharded(index_name, reader):
        index_file = os.path.join(path, index_name)
        weight_map = read_json_object(index_file, index_name).get("weight_map")
        if not (isinstance(weight_map, dict) and weight_map
                and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
            raise CheckpointFormatError(index_file, "the index needs a non-empty \"weight_map\" object {tensor name: "
                                        f"shard file name}}; found {weight_map!r:.80}.")
        for shard in sorted(set(weight_map.values())):
            if not _inside(shard):
                raise CheckpointFormatError(
                    index_file, f"shard path {shard!r} leaves the model directory; an index may only name files "
                    "inside it (relative paths without '..').")
        tensors, origin, problems = {}, {}, []
        for shard in sorted(set(weight_map.values())):
            shard_file = os.path.join(path, shard)
            if not os.path.isfile(shard_file):
                raise CheckpointFormatError(index_file, f"the index names shard {shard!r}, which is not in {path!r}.")
            for k, v in reader(shard_file).items():
                if k in origin:
                    problems.append(f"{k!r} is in both {origin[k]} and {shard}")
                origin[k] = shard
                tensors[k] = v
        for k in sorted(weight_map):
            if k not in origin:
                problems.append(f"{k!r} is listed in {weight_map[k]} but no shard holds it")
            elif origin[k] != weight_map[k]:
                problems.append(f"{k!r} is in {origin[k]}, the index says {weight_map[k]}")
        if problems:
            raise CheckpointFormatError(index_file, f"index and shards disagree ({len(problems)}): "
                                        + "; ".join(problems[:20]) + ".")
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


def _inside(rel: str) -> bool:
    """True when ``rel`` is a relative path that stays inside its directory (lexically; symlinks such as
    the Hugging Face cache's blobs are fine -- the index may not *name* a path outside)."""
    if not rel or "\x00" in rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in rel.split("/")[0]:
        return False
    norm = os.path.normpath(rel.replace("\\", "/"))
    return norm != "." and not norm.startswith("..") and not os.path.isabs(norm)


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
    cfg_file = os.path.join(path, "config.json")
    model_type = hf_config.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointFormatError(cfg_file, f"field 'model_type' must be a string naming the family "
                                    f"(supported: {sorted(FAMILIES)}); found {model_type!r:.60}.")
    family = family_module(model_type)
    check_hf_config(hf_config, getattr(family, "CONFIG_FIELDS", {}), cfg_file)
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
    check_float_dtypes(tensors, [k for k, (_, dt) in expected.items() if is_float_dtype(dt)], f"{path} ({fmt})")
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
