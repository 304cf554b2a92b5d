"""EfficientNet B0–B7 and EfficientNet-Lite0–4 in Flax linen, returning every stage's feature map.

The architecture mirrors the TF reference (ported to PyTorch by lukemelas ``efficientnet_pytorch`` and
``efficientnet_lite_pytorch``) so that its weights load exactly (see ``diffjax/checkpoints/efficientnet.py``):

- stem: 3x3/2 conv -> BN -> act;
- 7 stages of MBConv blocks: [1x1 expand conv -> BN -> act] -> kxk depthwise conv -> BN -> act ->
  [squeeze-excite: GAP -> 1x1 reduce -> act -> 1x1 expand -> sigmoid gate] -> 1x1 project -> BN,
  plus the identity skip when stride 1 and in == out (drop-connect on the branch in training only);
- head: 1x1 conv -> BN -> act -> global average pool -> dropout -> dense.

B-variants use swish and squeeze-excite; Lite-variants use ReLU6, no squeeze-excite, and keep the stem
(32), the head (1280) and the repeats of the first and last stage unscaled ("fix_head_stem").

Padding: ``"same"`` is TensorFlow's SAME (total pad ``max((ceil(i/s)-1)*s + k - i, 0)``, the smaller
half before), computed from the actual input size. It equals lukemelas' ``Conv2dStaticSamePadding``
when the input has the size the torch model was built for (its native ``image_size``). ``"symmetric"``
pads ``(k-1)//2`` on both sides, as torchvision's EfficientNet does.

Layout: NHWC. Output of ``EfficientNet.__call__(images [B,H,W,3] float32)``::

    {"features": (f1, f2, f3, f4, f5),   # stage outputs at strides 2, 4, 8, 16, 32 (timm features_only)
     "pooled":   [B, C_head],            # GAP of the head activation   (only when include_head)
     "logits":   [B, num_classes] f32}   # (only when include_head)

f_i: [B, ceil(H/2^i), ceil(W/2^i), C_i]; e.g. B0/Lite0 C = (16, 24, 40, 112, 320), B4 (24, 32, 56, 160, 448).

Speed on XLA:CPU: depthwise convs run as k*k shifted slices and the stem / 1x1 convs as matmuls
(``depthwise_impl="auto"``; grouped ``lax.conv`` is 5-80x slower there), and ``apply_in_chunks``
runs a large batch in cache-sized chunks. Parameters are identical for every implementation.

Typical use::

    model, variables = diffjax.checkpoints.efficientnet.lite0_imagenet()    # real ImageNet weights
    x = preprocess(images_uint8, "lite0")                                    # [B,224,224,3] float32
    feats = jax.jit(EfficientNet(model.config, include_head=False).apply)(variables, x)["features"]
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.layers import activation

# Every parameter replicated: EfficientNet is small (<70M params) and used frozen for features.
# (regex, spec) pairs as the trainer expects; empty = default (replicated) for all paths.
SHARDING_RULES: tuple = ()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (width, depth, resolution, dropout) — efficientnet_pytorch.utils.efficientnet_params, TF builder.
_PARAMS = {
    "efficientnet-b0": (1.0, 1.0, 224, 0.2),
    "efficientnet-b1": (1.0, 1.1, 240, 0.2),
    "efficientnet-b2": (1.1, 1.2, 260, 0.3),
    "efficientnet-b3": (1.2, 1.4, 300, 0.3),
    "efficientnet-b4": (1.4, 1.8, 380, 0.4),
    "efficientnet-b5": (1.6, 2.2, 456, 0.4),
    "efficientnet-b6": (1.8, 2.6, 528, 0.5),
    "efficientnet-b7": (2.0, 3.1, 600, 0.5),
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": (1.4, 1.8, 300, 0.3),
}

# Base stages (B0 / Lite0): (repeats, kernel, stride, expand_ratio, in_filters, out_filters).
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# Stages whose output is a returned feature map (the last stage of each stride: 2, 4, 8, 16, 32).
FEATURE_STAGES = (0, 1, 2, 4, 6)


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
    """Hyper-parameters of one EfficientNet variant (hashable: usable as a static module field)."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    lite: bool = False
    num_classes: int = 1000
    bn_eps: float = 1e-3
    bn_momentum: float = 0.99
    se_ratio: float | None = 0.25  # None for Lite
    drop_connect_rate: float = 0.2
    padding: str = "same"  # "same" (TF / lukemelas weights) or "symmetric" (torchvision weights)
    depth_divisor: int = 8

    @property
    def activation(self) -> str:
        return "relu6" if self.lite else "swish"

    @property
    def mean(self) -> tuple:
        return (0.5, 0.5, 0.5) if self.lite else IMAGENET_MEAN

    @property
    def std(self) -> tuple:
        return (0.5, 0.5, 0.5) if self.lite else IMAGENET_STD


class BlockSpec(NamedTuple):
    stage: int
    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int
    se_filters: int | None  # squeeze width, None = no squeeze-excite


_ALIASES = {f"b{i}": f"efficientnet-b{i}" for i in range(8)} | {f"lite{i}": f"efficientnet-lite{i}" for i in range(5)}


def canonical_name(name: str) -> str:
    """'b4', 'efficientnet_b4', 'EfficientNet-B4' -> 'efficientnet-b4'."""
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    key = _ALIASES.get(key.removeprefix("efficientnet-").replace("-", ""), key)
    if key not in _PARAMS:
        raise ValueError(f"Unknown EfficientNet variant {name!r}; expected one of {sorted(_PARAMS)} "
                         f"(or the short forms b0..b7, lite0..lite4).")
    return key


def efficientnet_config(name: str, **overrides: Any) -> EfficientNetConfig:
    """Config of a named variant ('efficientnet-b0'..'-b7', 'efficientnet-lite0'..'-lite4', or 'b4', 'lite0').

    ``overrides`` replace fields, e.g. ``num_classes=10`` or ``padding="symmetric"``.
    """
    key = canonical_name(name)
    w, d, r, p = _PARAMS[key]
    lite = "lite" in key
    cfg = EfficientNetConfig(name=key, width=w, depth=d, resolution=r, dropout=p, lite=lite,
                             se_ratio=None if lite else 0.25)
    return dataclasses.replace(cfg, **overrides)


def round_filters(filters: int, cfg: EfficientNetConfig, skip: bool = False) -> int:
    """Channel count scaled by width, rounded to a multiple of 8, never more than 10% down (TF rule)."""
    if skip or not cfg.width:
        return filters
    d = cfg.depth_divisor
    scaled = filters * cfg.width
    new = max(d, int(scaled + d / 2) // d * d)
    if new < 0.9 * scaled:
        new += d
    return int(new)


def round_repeats(repeats: int, cfg: EfficientNetConfig) -> int:
    return int(math.ceil(cfg.depth * repeats))


def stem_filters(cfg: EfficientNetConfig) -> int:
    return round_filters(32, cfg, skip=cfg.lite)


def head_filters(cfg: EfficientNetConfig) -> int:
    return round_filters(1280, cfg, skip=cfg.lite)


def block_specs(cfg: EfficientNetConfig) -> tuple[BlockSpec, ...]:
    """Flat list of MBConv blocks in order (the index is lukemelas' ``_blocks.N``)."""
    specs = []
    last = len(_BASE_STAGES) - 1
    for s, (reps, k, stride, e, fin, fout) in enumerate(_BASE_STAGES):
        fin, fout = round_filters(fin, cfg), round_filters(fout, cfg)
        if cfg.lite and s in (0, last):
            n = reps  # fixed repeats for the first and last stage
            if s == 0:
                fin = stem_filters(cfg)
        else:
            n = round_repeats(reps, cfg)
        for j in range(n):
            bin_, bstride = (fin, stride) if j == 0 else (fout, 1)
            se = None
            if cfg.se_ratio is not None and 0 < cfg.se_ratio <= 1:
                se = max(1, int(bin_ * cfg.se_ratio))
            specs.append(BlockSpec(s, k, bstride, e, bin_, fout, se))
    return tuple(specs)


def stage_end_blocks(cfg: EfficientNetConfig) -> tuple[int, ...]:
    """Index of the last block of each feature stage (strides 2, 4, 8, 16, 32)."""
    specs = block_specs(cfg)
    return tuple(max(i for i, b in enumerate(specs) if b.stage == s) for s in FEATURE_STAGES)


def feature_channels(cfg: EfficientNetConfig) -> tuple[int, ...]:
    """Channels of the 5 returned feature maps."""
    specs = block_specs(cfg)
    return tuple(specs[i].out_filters for i in stage_end_blocks(cfg))


def _act(name: str, x: jax.Array) -> jax.Array:
    return activation(name)(x)  # "relu6" (Lite) or "swish", from the shared table


def _pads(cfg: EfficientNetConfig, k: int):
    if cfg.padding == "same":
        return "SAME"  # lax SAME == TF SAME: smaller half of the total pad before
    if cfg.padding == "symmetric":
        return ((k - 1) // 2, (k - 1) // 2)
    raise ValueError(f"padding must be 'same' or 'symmetric', got {cfg.padding!r}")


# MBConv pads the narrow block input (not the expanded one) when the padded grid is at most this much larger: the
# 1x1 expand then computes the border rows too, which pays only where the border is thin (112x112 and 56x56 grids
# of Lite0 / B4; a 7x7 grid with a 5x5 kernel would grow 2.5x).
_PRE_PAD_MAX_AREA = 1.1


def _explicit_pads(size: int, k: int, s: int, padding: str) -> tuple[int, int]:
    if padding == "valid":  # already padded by the caller
        return 0, 0
    if padding == "symmetric":
        return (k - 1) // 2, (k - 1) // 2
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _taps(x, k: int, s: int, padding: str):
    """The k*k shifted, strided views of x [B,H,W,C] a k x k / stride s conv sees -> list of [B,oh,ow,C]."""
    (h, wd) = x.shape[1:3]
    ph, pw = _explicit_pads(h, k, s, padding), _explicit_pads(wd, k, s, padding)
    oh, ow = (h + sum(ph) - k) // s + 1, (wd + sum(pw) - k) // s + 1
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0))) if any(ph + pw) else x
    return [jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * s + 1, j + (ow - 1) * s + 1,
                                             xp.shape[3]), (1, s, s, 1))
            for i in range(k) for j in range(k)]


class DepthwiseConv(nn.Module):
    """k x k depthwise conv (no bias) as a sum of k*k shifted, strided slices times per-channel weights.

    Same parameter as ``nn.Conv(C, (k,k), feature_group_count=C)`` (kernel [k,k,1,C]) and the same
    output; XLA:CPU runs grouped convolutions 5-80x slower than this fused elementwise form.
    """

    kernel: int
    stride: int
    padding: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, c = self.kernel, x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        acc = None
        for t, tap in enumerate(_taps(x, k, self.stride, self.padding)):
            tap = tap * w[t // k, t % k, 0]
            acc = tap if acc is None else acc + tap
        return acc


class DenseConv(nn.Module):
    """k x k conv (no bias, groups=1) as im2col (concatenated taps) @ kernel: one matmul.

    Same parameter and output as ``nn.Conv(features, (k,k), use_bias=False)`` (kernel [k,k,I,O]);
    1x1 convs become a plain matmul over the channel axis. Faster than ``lax.conv`` on XLA:CPU for
    the stem (3 input channels) and the 1x1 expand / project / head convs.
    """

    features: int
    kernel: int
    stride: int
    padding: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, c = self.kernel, x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c, self.features), jnp.float32)
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        if k > 1 or self.stride > 1:
            x = jnp.concatenate(_taps(x, k, self.stride, self.padding), axis=-1)
        return jax.lax.dot_general(x, w.reshape(k * k * c, self.features), (((3,), (0,)), ((), ())))


def _use_shift_depthwise(impl: str) -> bool:
    if impl == "auto":
        return jax.default_backend() == "cpu"
    if impl not in ("conv", "shift"):
        raise ValueError(f"depthwise must be 'auto', 'conv' or 'shift', got {impl!r}")
    return impl == "shift"


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional activation; ``depthwise`` uses one group per channel."""

    cfg: EfficientNetConfig
    features: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    act: bool = True
    dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    pre_padded: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        shift = _use_shift_depthwise(self.depthwise_impl)
        if self.depthwise and shift:
            x = DepthwiseConv(self.kernel, self.stride, "valid" if self.pre_padded else self.cfg.padding,
                              dtype=self.dtype, name="conv")(x)
        elif not self.depthwise and (shift or self.kernel == 1):
            x = DenseConv(self.features, self.kernel, self.stride, self.cfg.padding, dtype=self.dtype,
                          name="conv")(x)
        else:
            pad = _pads(self.cfg, self.kernel) if self.kernel > 1 or self.stride > 1 else "VALID"
            if isinstance(pad, tuple):
                pad = (pad, pad)
            x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                        padding=pad, use_bias=False,
                        feature_group_count=x.shape[-1] if self.depthwise else 1,
                        dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.cfg.bn_momentum,
                         epsilon=self.cfg.bn_eps, dtype=self.dtype, name="bn")(x)
        return _act(self.cfg.activation, x) if self.act else x


class MBConv(nn.Module):
    """Mobile inverted bottleneck: x [B,H,W,in] -> [B,ceil(H/s),ceil(W/s),out]."""

    cfg: EfficientNetConfig
    spec: BlockSpec
    drop_rate: float = 0.0
    dtype: Any = jnp.float32
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        b, cfg = self.spec, self.cfg
        x = inputs
        mid = b.in_filters * b.expand_ratio
        # inference (train mode's batch statistics must not see the border): pad the narrow block input instead of
        # the expanded one (expand_ratio x fewer bytes); the 1x1 expand runs on the padded grid and its border is
        # zeroed in the same fusion (_PRE_PAD_MAX_AREA)
        (h, w) = x.shape[1:3]
        ph, pw = _explicit_pads(h, b.kernel, b.stride, cfg.padding), _explicit_pads(w, b.kernel, b.stride, cfg.padding)
        pre_pad = (not train and b.expand_ratio != 1 and _use_shift_depthwise(self.depthwise_impl)
                   and (h + sum(ph)) * (w + sum(pw)) <= _PRE_PAD_MAX_AREA * h * w)
        if pre_pad:
            x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
            interior = np.zeros((1, h + sum(ph), w + sum(pw), 1), bool)
            interior[:, ph[0]:ph[0] + h, pw[0]:pw[0] + w] = True
        if b.expand_ratio != 1:
            x = ConvBN(cfg, mid, dtype=self.dtype, name="expand")(x, train)
        if pre_pad:
            x = jnp.where(interior, x, jnp.zeros((), x.dtype))
        x = ConvBN(cfg, mid, kernel=b.kernel, stride=b.stride, depthwise=True, dtype=self.dtype,
                   depthwise_impl=self.depthwise_impl, pre_padded=pre_pad, name="depthwise")(x, train)
        if b.se_filters is not None:
            s = jnp.mean(x, axis=(1, 2))
            s = nn.Dense(b.se_filters, dtype=self.dtype, name="se_reduce")(s)
            s = _act(cfg.activation, s)
            s = nn.Dense(mid, dtype=self.dtype, name="se_expand")(s)
            x = x * nn.sigmoid(s)[:, None, None, :]
        x = ConvBN(cfg, b.out_filters, act=False, dtype=self.dtype, name="project")(x, train)
        if b.stride == 1 and b.in_filters == b.out_filters:
            if train and self.drop_rate > 0:
                x = nn.Dropout(self.drop_rate, broadcast_dims=(1, 2, 3))(x, deterministic=False)
            x = x + inputs
        return x


class EfficientNet(nn.Module):
    """EfficientNet / EfficientNet-Lite, NHWC.

    Attributes:
      config: an ``EfficientNetConfig`` (``efficientnet_config(name)``).
      include_head: False skips the 1x1 head conv, pooling and classifier (feature extraction only);
        the returned dict then has only "features". Parameters of a full model apply unchanged.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32; logits are float32.
      depthwise_impl: "conv" (grouped ``lax.conv``), "shift" (sum of k*k shifted slices, much faster
        on XLA:CPU) or "auto" (shift on CPU, conv elsewhere). Same parameters and outputs either way.

    ``__call__(images [B,H,W,3] float32 (already normalised, see ``preprocess``), train=False)``.
    ``train=True`` uses batch statistics (``mutable=["batch_stats"]``), dropout and drop-connect
    (rng ``"dropout"``); inference (default) uses running averages and no dropout / drop-connect.
    """

    config: EfficientNetConfig
    include_head: bool = True
    dtype: Any = jnp.float32
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, images, train: bool = False):
        cfg = self.config
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"EfficientNet expects NHWC images [B,H,W,3], got shape {images.shape}; "
                             "use efficientnet.preprocess() for uint8 / grayscale / NCHW inputs.")
        x = images.astype(self.dtype)
        x = ConvBN(cfg, stem_filters(cfg), kernel=3, stride=2, dtype=self.dtype, name="stem")(x, train)
        specs = block_specs(cfg)
        ends = set(stage_end_blocks(cfg))
        features = []
        for i, spec in enumerate(specs):
            rate = cfg.drop_connect_rate * i / len(specs)
            x = MBConv(cfg, spec, drop_rate=rate, dtype=self.dtype, depthwise_impl=self.depthwise_impl,
                       name=f"blocks_{i}")(x, train)
            if i in ends:
                features.append(x)
        out = {"features": tuple(features)}
        if not self.include_head:
            return out
        x = ConvBN(cfg, head_filters(cfg), dtype=self.dtype, name="head")(x, train)
        pooled = jnp.mean(x, axis=(1, 2))
        h = nn.Dropout(cfg.dropout, deterministic=not train)(pooled) if cfg.dropout > 0 else pooled
        logits = nn.Dense(cfg.num_classes, dtype=self.dtype, name="classifier")(h)
        out["pooled"] = pooled
        out["logits"] = logits.astype(jnp.float32)
        return out


def apply_in_chunks(model: EfficientNet, variables, images: jax.Array, chunk: int):
    """``model.apply(variables, images)`` run as ``lax.map`` over chunks of ``chunk`` images (jittable).

    Same result as one call (inference mode). On XLA:CPU small chunks keep activations in cache:
    Lite0 at 224 runs ~2x faster per image in chunks of 4 than as one batch of 32. The batch is
    zero-padded to a multiple of ``chunk`` and the padding dropped. images: [B,H,W,3].
    """
    b = images.shape[0]
    n = -(-b // chunk)
    pad = n * chunk - b
    x = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))) if pad else images
    out = jax.lax.map(lambda xb: model.apply(variables, xb), x.reshape(n, chunk, *x.shape[1:]))
    return jax.tree_util.tree_map(lambda a: a.reshape(n * chunk, *a.shape[2:])[:b], out)


def preprocess(images, name: str | EfficientNetConfig, resolution: int | None = None,
               method: str = "bicubic", antialias: bool = True) -> jax.Array:
    """uint8 images -> normalised float32 model input at the variant's resolution.

    Args:
      images: [B,H,W,3], one [H,W,3] / [H,W], or grayscale [B,H,W] / [B,H,W,1] (repeated to RGB); uint8 0..255
        (float inputs are taken to be on the same 0..255 scale).
      name: variant name or config; Lite uses mean = std = 0.5, B* ImageNet mean / std (on x/255).
      resolution: output side (default: the variant's native resolution, e.g. 224 Lite0, 380 B4).
      method, antialias: passed to ``jax.image.resize``. Bicubic + antialias (as TF's EfficientNet eval
        and PIL's bicubic resize; ImageNet Lite0 on skimage's chelsea: p(285) = 0.774 vs PIL 0.773).
    Returns: [B, R, R, 3] float32.
    """
    cfg = name if isinstance(name, EfficientNetConfig) else efficientnet_config(name)
    x = jnp.asarray(images)
    if x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3):
        x = x[None]  # a single image [H,W] / [H,W,3]
    if x.ndim == 3:
        x = x[..., None]  # grayscale batch [B,H,W]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"preprocess expects [B,H,W,3], [B,H,W,1], [B,H,W] or [H,W,3] images, "
                         f"got shape {tuple(jnp.shape(images))}.")
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = x.astype(jnp.float32) / 255.0
    r = resolution or cfg.resolution
    if x.shape[1:3] != (r, r):
        x = jax.image.resize(x, (x.shape[0], r, r, 3), method=method, antialias=antialias)
    mean = jnp.asarray(cfg.mean, jnp.float32)
    std = jnp.asarray(cfg.std, jnp.float32)
    return (x - mean) / std
