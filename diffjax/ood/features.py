"""Multi-stage image features for DLSR (papers.md, paper 003, "Features").

Pipeline (one jitted function per encoder, run over global batches on a mesh by ``extract_features``):

    images [B, H, W, 3] uint8 -> float in [0, 1] -> resize to the encoder's resolution (bilinear,
    antialiased) -> (x - mean) / std -> frozen encoder -> stage maps F_l [B, h_l, w_l, C_l]
    -> z_l = GAP(F_l) [B, C_l] -> concat -> raw features [B, D], D = sum_l C_l.

Normalisation is a separate cheap step on the raw features so that dataset statistics can be
fitted on the same numbers:

* ``"per_sample"`` (the paper / authors' code): z~_l = (z_l - mean_c(z_l)) / (std_c(z_l) + 1e-5)
  per example and per layer, over the C_l channels; ``ddof=1`` like ``torch.std`` in the code.
* ``"dataset"``: z~ = (z - mu) / (sigma + 1e-5) with per-feature mu, sigma of the ID training
  features (``fit_dataset_stats``; saved with the model by the task).
* ``"none"``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data.images import check_images
from diffjax.runtime import RuntimeContext

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)  # EfficientNet-Lite's own preprocessing
LITE_STD = (0.5, 0.5, 0.5)


def layer_boundaries(dims: Sequence[int]) -> tuple[int, ...]:
    """Cumulative slice ends of the concatenated layers, e.g. (24, 32, 56, 160, 448) -> (24, 56, 112, 272, 720)."""
    return tuple(int(x) for x in np.cumsum(dims))


def split_layers(z: jax.Array, dims: Sequence[int]) -> list[jax.Array]:
    """z: [..., D] -> [z_l: [..., C_l]] with D = sum(dims)."""
    if z.shape[-1] != sum(dims):
        raise ValueError(f"features have dim {z.shape[-1]} but the layer dims {tuple(dims)} sum to {sum(dims)}")
    ends = layer_boundaries(dims)
    return [z[..., e - c:e] for c, e in zip(dims, ends)]


def preprocess(images: jax.Array, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """images: [B, H, W, 3] uint8 or float in [0, 1] (grayscale [B, H, W] / [B, H, W, 1] is repeated
    to RGB) -> [B, S, S, 3] float32 normalised, S = image_size. Other layouts (NCHW, RGBA, uint16, a
    3-d array that reads two ways) raise ``ValueError`` at trace time (``data.images.check_images``,
    the one image check); the float range is checked on concrete arrays only (the host boundary:
    ``make_feature_fn``'s function, ``extract_features``), not on tracers."""
    check_images(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), "bilinear", antialias=True)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def global_average_pool(stage_maps: Sequence[jax.Array]) -> jax.Array:
    """[F_l: [B, h_l, w_l, C_l]] -> concat_l GAP(F_l): [B, sum_l C_l] float32."""
    return jnp.concatenate([jnp.mean(f.astype(jnp.float32), axis=(1, 2)) for f in stage_maps], axis=-1)


def make_feature_program(encode_stages: Callable[[Any, jax.Array], Sequence[jax.Array]], *, image_size: int,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable[[Any, jax.Array], jax.Array]:
    """``(variables, images [B, H, W, 3] uint8 or float in [0, 1]) -> raw GAP features [B, D] float32``, jitted.

    ``encode_stages(variables, x: [B, S, S, 3] float32 normalised) -> [F_l: [B, h_l, w_l, C_l]]`` (any
    dtype: GAP sums in float32). The frozen encoder's variables are an argument, so one compiled program
    serves them wherever they are placed (replicated on a mesh: ``image_encoder.FeatureExtractor.on``).
    The input layout is checked at trace time (``preprocess``); ``extract_features`` checks the range.
    """

    @jax.jit
    def program(variables, images):
        return global_average_pool(encode_stages(variables, preprocess(images, image_size, mean, std)))

    return program


def make_feature_fn(encode_stages: Callable[[jax.Array], Sequence[jax.Array]], *, image_size: int,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable[[jax.Array], jax.Array]:
    """``images [B, H, W, 3] uint8 (or float in [0, 1]) -> raw GAP features [B, D]``, jitted.

    ``encode_stages(x: [B, S, S, 3] float32 normalised) -> [F_l: [B, h_l, w_l, C_l]]`` closes over
    the frozen encoder's params (they are constants of the compiled function, never trained; the
    task's extractor passes them as an argument instead: ``make_feature_program``).
    The returned function checks its input on the host before the jitted call with the same
    ``data.images.check_images`` as ``to_rgb_uint8`` and the ``.npy`` reader: 0..255 floats (read as
    0..1 before), NCHW, RGBA and ambiguous 3-d arrays are refused (under an outer ``jit``: layout only).
    """
    program = make_feature_program(lambda _, x: encode_stages(x), image_size=image_size, mean=mean, std=std)

    def feature_fn(images):
        check_images(images)
        return program(None, images)

    return feature_fn


def zscore_per_sample(z: jax.Array, dims: Sequence[int], *, eps: float = 1e-5, ddof: int = 1) -> jax.Array:
    """Per-example, per-layer z-score (papers.md 003): z: [..., D] -> [..., D].

    For each layer slice z_l: (z_l - mean(z_l)) / (std(z_l, ddof) + eps) over its C_l channels.
    """
    parts = []
    for zl in split_layers(z, dims):
        mu = jnp.mean(zl, axis=-1, keepdims=True)
        sd = jnp.std(zl, axis=-1, keepdims=True, ddof=ddof)
        parts.append((zl - mu) / (sd + eps))
    return jnp.concatenate(parts, axis=-1)


def fit_dataset_stats(raw_features: np.ndarray) -> dict[str, np.ndarray]:
    """Per-feature statistics of ID training features [N, D] -> {"mean": [D], "std": [D]} float32."""
    raw = np.asarray(raw_features, np.float64)
    return {"mean": raw.mean(0).astype(np.float32), "std": raw.std(0).astype(np.float32)}


def normalize_features(raw: jax.Array, dims: Sequence[int], mode: str = "per_sample", *,
                       stats: dict | None = None, eps: float = 1e-5, ddof: int = 1) -> jax.Array:
    """Raw GAP features [..., D] -> z_0 [..., D] by ``mode`` in {"per_sample", "dataset", "none"}."""
    if mode == "per_sample":
        return zscore_per_sample(raw, dims, eps=eps, ddof=ddof)
    if mode == "dataset":
        if stats is None:
            raise ValueError("normalize='dataset' needs stats from fit_dataset_stats(ID train features)")
        return (raw - stats["mean"]) / (stats["std"] + eps)
    if mode == "none":
        return raw
    raise ValueError(f"unknown feature normalisation {mode!r}; expected 'per_sample', 'dataset' or 'none'")


def extract_features(feature_fn: Callable[[jax.Array], jax.Array], images: np.ndarray, *,
                     batch_size: int = 256, desc: str = "features", progress: bool = True,
                     context: RuntimeContext | None = None) -> np.ndarray:
    """Runs ``feature_fn`` over ``images [N, H, W, 3]`` on ``context``'s mesh -> [N, D] float32 numpy.

    ``context.map_batches`` (``RuntimeContext.local()`` when None: every local device on "data"):
    global batches of ``batch_size`` images (rounded up to the data axis) sharded over "data", the last
    one padded by repeating the last image so that one compilation serves the whole set, the features
    gathered back in input order on every host. Per-image features do not depend on the mesh or the
    batch size (up to float rounding of the batch shape). A long run prints images/s and ETA on stderr
    (``runtime.Progress``, process 0). ``images`` is checked once (``check_images``) on the host.
    """
    check_images(images)
    context = context if context is not None else RuntimeContext.local()
    out = context.map_batches(lambda batch, index: feature_fn(batch), np.asarray(images), batch_size=int(batch_size),
                              progress=desc if progress else None, unit="images")
    return np.asarray(out, np.float32)
