"""DLSR's frozen feature extractor (paper 003): ``config.task.encoder`` -> an EfficientNet that maps
images to their raw layer-wise GAP features.

``encoder`` fields: ``name`` (an EfficientNet variant, e.g. ``"efficientnet-lite0"`` or ``"b4"``),
``weights`` (``""`` / ``"embedded"``: the embedded ImageNet weights; a path; ``"random"``: random conv
weights for tests and smoke runs), ``dtype`` (``"float32"``, or ``"bfloat16"``: params and activations in
bf16, BN statistics and the GAP sum in float32, features float32), ``image_size`` (0 = the variant's
resolution), ``random_seed``. The encoder is not trained: it lives in the task, never in ``params``.

* ``layer_dims(enc)``: channels of the 5 stages (the feature layout, D = sum) without building anything;
* ``input_size(enc)``: the side images are resized to;
* ``feature_extractor(enc)``: the jitted ``(variables, images [B, H, W, 3] uint8) -> raw features [B, D]``
  and its variables; ``.on(context)`` -> ``images -> features`` on the context's mesh, for
  ``diffjax.ood.features.extract_features`` (global batches sharded over "data").
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models import efficientnet as en
from diffjax.ood import features as feat
from diffjax.runtime import RuntimeContext


def is_encoder_name(v) -> bool:
    """True when ``v`` names an EfficientNet variant (the ``encoder.name`` field check)."""
    try:
        en.canonical_name(v)
        return True
    except (ValueError, AttributeError, TypeError):
        return False


def variant_config(enc):
    """The EfficientNet config of ``enc.name`` (no weights read)."""
    return en.efficientnet_config(en.canonical_name(enc.name))


def layer_dims(enc) -> tuple[int, ...]:
    """Channels of the encoder's 5 feature stages: the raw features are their concatenation."""
    return tuple(int(d) for d in en.feature_channels(variant_config(enc)))


def input_size(enc) -> int:
    """``enc.image_size``, else the variant's resolution."""
    return int(enc.image_size) or int(variant_config(enc).resolution)


def compute_dtype(enc) -> jnp.dtype:
    """``enc.dtype`` ("float32" / "bfloat16") as a jnp dtype: what the convolutions run in."""
    return jnp.dtype(enc.dtype)


def cast_variables(variables: dict, dtype) -> dict:
    """Frozen EfficientNet variables for ``dtype`` compute: the ``params`` collection (conv / dense
    kernels, BN scale and bias) cast to ``dtype``; ``batch_stats`` (BN running mean / var) stay float32, so
    BN normalises in float32 (flax promotes ``x - mean`` to the statistics' dtype) and rounds once."""
    def leaf(path, x):
        in_params = str(getattr(path[0], "key", path[0])) == "params"
        return np.asarray(x, dtype) if in_params else np.asarray(x, np.float32)

    return jax.tree_util.tree_map_with_path(leaf, variables)


def build_encoder(enc):
    """``config.task.encoder`` -> (encode_stages(variables, x) -> 5 stage maps, variables (host numpy, cast
    by ``cast_variables`` to ``enc.dtype``), layer dims, mean, std, image_size)."""
    name = en.canonical_name(enc.name)
    dtype = compute_dtype(enc)
    if enc.weights == "random":  # tests / smoke runs only: random conv weights, BN at init stats
        cfg = en.efficientnet_config(name)
        model = en.EfficientNet(cfg, include_head=False, dtype=dtype)
        size = enc.image_size or cfg.resolution
        variables = random_variables(model, size, int(enc.random_seed))
    else:
        from diffjax.checkpoints.efficientnet import load_efficientnet

        path = None if enc.weights in ("", "embedded") else os.path.expanduser(enc.weights)
        model, variables = load_efficientnet(name, path, include_head=False, dtype=dtype)
        cfg = model.config
    dims = en.feature_channels(cfg)

    def encode_stages(variables, x):
        return model.apply(variables, x.astype(dtype))["features"]

    return (encode_stages, cast_variables(variables, dtype), tuple(int(d) for d in dims), cfg.mean, cfg.std,
            int(enc.image_size or cfg.resolution))


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """The frozen encoder of ``config.task.encoder`` as a program and its variables.

    ``program``: jitted ``(variables, images [B, H, W, 3] uint8) -> raw GAP features [B, D] float32``
    (``features.make_feature_program``); ``variables``: host numpy, params in ``enc.dtype``, BN statistics
    float32. The variables are an argument, not constants of the compiled program: ``on(context)`` places
    them replicated on the context's mesh and returns ``images -> features`` for ``extract_features``.
    """

    program: Callable
    variables: dict

    def on(self, context: RuntimeContext) -> Callable[[jax.Array], jax.Array]:
        placed = jax.device_put(self.variables, context.replicated())
        return lambda images: self.program(placed, images)


def feature_extractor(enc) -> FeatureExtractor:
    """The raw-feature extractor of ``enc``: images [B, H, W, 3] -> [B, D] (D = sum of ``layer_dims``)."""
    encode, variables, dims, mean, std, size = build_encoder(enc)
    assert dims == layer_dims(enc), (dims, layer_dims(enc))
    return FeatureExtractor(feat.make_feature_program(encode, image_size=size, mean=mean, std=std), variables)


def random_variables(model, size: int, seed: int) -> dict:
    """Random-weight variables without compiling ``model.init`` (that compile cost ~6 s on CPU).

    Shapes from ``jax.eval_shape(model.init)``; every >=2-d kernel ~ N(0, 1/fan_in) with fan_in =
    prod(shape[:-1]) (He-like, also right for depthwise ``[k, k, 1, C]``), 1-d ``scale`` / ``var``
    = 1, other 1-d leaves (bias, BN mean) = 0: BN at its init statistics, as ``model.init``.
    """
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        if len(x.shape) >= 2:
            return (rng.standard_normal(x.shape) / np.sqrt(np.prod(x.shape[:-1]))).astype(x.dtype)
        return np.full(x.shape, 1.0 if name in ("scale", "var") else 0.0, x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)
