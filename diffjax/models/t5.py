"""T5 / T5 v1.1 / mT5 / UMT5 encoder-decoder in Flax linen, numerically matching transformers' PyTorch T5.

Architecture (Raffel et al. 2020; v1.1 and mT5 changes noted):
- Shared token embedding ``shared`` [V, D] feeds encoder and decoder. No absolute positions.
- Pre-norm blocks with T5's RMS layer norm (no mean subtraction, no bias, variance in fp32).
- Attention without the 1/sqrt(d_kv) scaling (T5 folds it into the init of ``query``), plus a learned
  relative-position bias [num_buckets, H] owned by each stack's first layer and shared by all its
  layers (UMT5: one table per layer). Buckets are bidirectional in the encoder and unidirectional
  (past only) in a causal decoder.
- Feed-forward: ``relu`` (T5 v1.0: wi -> relu -> wo) or gated (v1.1 / mT5 ``gated-gelu``:
  gelu_new(wi_0 x) * wi_1 x -> wo).
- LM head tied to ``shared`` (v1.0, decoder output scaled by d_model**-0.5 first) or an untied
  ``lm_head`` (v1.1 / mT5, no scaling). ``tie_word_embeddings`` and ``scale_decoder_outputs`` are
  separate fields, as in transformers >= 5.

Diffusion use (papers.md 001, AR2Diff): ``decoder_attention="bidirectional"`` removes the causal mask
from the decoder's self-attention, so every target position sees the whole (noisy) target. By default
the decoder's relative-position buckets then become bidirectional too (``decoder_bidirectional_buckets``
overrides that; keeping the causal bucketing reuses a pretrained AR decoder's bias table unchanged but
maps every future offset to bucket 0).

Shapes: ``input_ids: [B, S] int32``, ``decoder_input_ids: [B, T] int32``, masks ``[B, S]`` / ``[B, T]``
(bool or 0/1; True/1 = real token), hidden states ``[B, S, D]``, logits ``[B, T, V] float32``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax.models.layers import ACTIVATIONS, RMSNorm, gated_activation, softmax_attention
from diffjax.models.inputs import check_token_ids
from diffjax.models.scan import layer_class, remat_name

Dtype = Any

DECODER_ATTENTION_MODES = ("causal", "bidirectional")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5-family encoder-decoder (field names follow HF ``T5Config``).

    ``feed_forward_proj``: "relu" (T5 v1.0), "gated-gelu" (v1.1 / mT5; gelu_new), or "[gated-]ACT" with
    ACT in relu, gelu, gelu_new, silu. ``decoder_attention``: "causal" (AR) or "bidirectional"
    (diffusion). ``decoder_bidirectional_buckets``: None = follow ``decoder_attention``.
    ``relative_attention_bias_per_layer``: every self-attention layer has its own bias table (UMT5)
    instead of the first layer's table being shared by the stack (T5, mT5).
    ``remat``: rematerialisation of each block in the backward pass, "none" | "full" | "dots_saveable"
    (the old bool: True = "full"; same params). ``scan_layers``: each stack's blocks as one ``nn.scan``
    (params ``{encoder,decoder}/layers/...`` with a leading layer axis, ``diffjax.models.scan``).
    ``dtype`` is the computation dtype, ``param_dtype`` the parameters' dtype.
    ``model_type`` ("t5" / "mt5" / "umt5") only matters when writing an HF checkpoint back.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: Optional[int] = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool = True
    decoder_attention: str = "causal"
    decoder_bidirectional_buckets: Optional[bool] = None
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    relative_attention_bias_per_layer: bool = False
    remat: str = "none"
    scan_layers: bool = False
    model_type: str = "t5"
    initializer_factor: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "remat", remat_name(self.remat))
        if self.decoder_attention not in DECODER_ATTENTION_MODES:
            raise ValueError(
                f"decoder_attention must be one of {DECODER_ATTENTION_MODES}, got {self.decoder_attention!r}."
            )
        self.activation  # validates feed_forward_proj
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def activation(self) -> str:
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"feed_forward_proj must be 'ACT' or 'gated-ACT' (e.g. 'relu', 'gated-gelu'), "
                f"got {self.feed_forward_proj!r}."
            )
        act = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if act not in ACTIVATIONS:
            raise ValueError(f"Unsupported T5 activation {act!r}; supported: {sorted(ACTIVATIONS)}.")
        return act

    @property
    def decoder_buckets_bidirectional(self) -> bool:
        if self.decoder_bidirectional_buckets is not None:
            return bool(self.decoder_bidirectional_buckets)
        return self.decoder_attention == "bidirectional"


def relative_position_bucket(
    relative_position: np.ndarray, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Mesh-TF / HF T5 bucketing of ``relative_position = key_pos - query_pos`` (int array, any shape).

    Half of the buckets (per direction) are exact offsets, the other half log-spaced up to
    ``max_distance``; with ``bidirectional=False`` positive (future) offsets all fall in bucket 0.
    Computed with numpy in float32 exactly like the PyTorch reference (static shapes: done at trace
    time, so the bucket table is a compile-time constant). Returns int32 in [0, num_buckets).
    """
    rp = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets += (rp > 0).astype(np.int64) * num_buckets
        rp = np.abs(rp)
    else:
        rp = -np.minimum(rp, 0)
    max_exact = num_buckets // 2
    is_small = rp < max_exact
    with np.errstate(divide="ignore"):
        scaled = (
            np.log(rp.astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)
        )
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    buckets += np.where(is_small, rp, large)
    return buckets.astype(np.int32)


def _as_bool_mask(mask, shape) -> jnp.ndarray:
    if mask is None:
        return jnp.ones(shape, dtype=bool)
    return jnp.asarray(mask).astype(bool)


def _relative_bias(cfg: T5Config, buckets) -> jnp.ndarray:
    """Bucket ids [Lq, Lk] -> bias [1, H, Lq, Lk] from a ``relative_attention_bias`` table
    [num_buckets, H] created in the calling module's scope (call only inside a compact method)."""
    table = nn.Embed(
        cfg.relative_attention_num_buckets, cfg.num_heads, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        embedding_init=nn.initializers.normal(cfg.initializer_factor * cfg.d_model ** -0.5),
        name="relative_attention_bias")
    return jnp.transpose(table(buckets), (2, 0, 1))[None]


class T5Attention(nn.Module):
    """Multi-head attention without score scaling.

    x: [B, Lq, D]; kv: [B, Lk, D]; bias: [1 or B, H, Lq, Lk] or None; mask: [B, 1 or H, Lq, Lk] bool
    (True = may attend). Returns [B, Lq, D].
    """

    config: T5Config

    @nn.compact
    def __call__(self, x, kv, bias, mask, deterministic: bool = True):
        cfg = self.config
        inner = cfg.num_heads * cfg.d_kv
        f = cfg.initializer_factor
        dense = lambda n, feats, std: nn.Dense(  # noqa: E731
            feats, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=nn.initializers.normal(f * std), name=n)
        q = dense("query", inner, (cfg.d_model * cfg.d_kv) ** -0.5)(x)
        k = dense("key", inner, cfg.d_model ** -0.5)(kv)
        v = dense("value", inner, cfg.d_model ** -0.5)(kv)
        split = lambda t: t.reshape(t.shape[:-1] + (cfg.num_heads, cfg.d_kv))  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        drop = nn.Dropout(cfg.dropout_rate)
        out = softmax_attention(q, k, v, bias, scale=1.0, mask=mask,  # T5 does not scale the scores
                                weights_dropout=lambda e: drop(e, deterministic=deterministic))
        out = out.reshape(x.shape[:-1] + (inner,))
        return dense("out", cfg.d_model, inner ** -0.5)(out)


class T5MLP(nn.Module):
    """Feed-forward: wo(act(wi x)) or, gated, wo(act(wi_0 x) * wi_1 x). x: [B, L, D] -> [B, L, D]."""

    config: T5Config

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        cfg = self.config
        f = cfg.initializer_factor
        dense = lambda n, feats, std: nn.Dense(  # noqa: E731
            feats, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=nn.initializers.normal(f * std), name=n)
        if cfg.is_gated:
            h = gated_activation(cfg.activation, dense("wi_0", cfg.d_ff, cfg.d_model ** -0.5)(x),
                                 dense("wi_1", cfg.d_ff, cfg.d_model ** -0.5)(x))
        else:
            h = ACTIVATIONS[cfg.activation](dense("wi", cfg.d_ff, cfg.d_model ** -0.5)(x))
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return dense("wo", cfg.d_model, cfg.d_ff ** -0.5)(h)


class T5Block(nn.Module):
    """Pre-norm block: self-attention, (decoder only) cross-attention, feed-forward; residual each.
    ``(h [B, L, D], ...) -> (h, None)`` (a scan body's ``(carry, y)``)."""

    config: T5Config
    is_decoder: bool = False

    @nn.compact
    def __call__(self, h, self_bias, self_mask, enc=None, cross_mask=None, deterministic: bool = True):
        """``self_bias``: [1, H, L, L] shared bias, or (per-layer bias, UMT5) the bucket ids [L, L] int32."""
        cfg = self.config
        if cfg.relative_attention_bias_per_layer:
            self_bias = _relative_bias(cfg, self_bias)
        norm = lambda n: RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name=n)  # noqa: E731
        drop = lambda t: nn.Dropout(cfg.dropout_rate)(t, deterministic=deterministic)  # noqa: E731
        x = norm("self_attention_norm")(h)
        h = h + drop(T5Attention(cfg, name="self_attention")(x, x, self_bias, self_mask, deterministic))
        if self.is_decoder:
            x = norm("cross_attention_norm")(h)
            h = h + drop(T5Attention(cfg, name="cross_attention")(x, enc, None, cross_mask, deterministic))
        x = norm("mlp_norm")(h)
        return h + drop(T5MLP(cfg, name="mlp")(x, deterministic)), None


class T5Stack(nn.Module):
    """Encoder (``is_decoder=False``) or decoder stack over already-embedded inputs.

    h: [B, L, D]; mask: [B, L] bool (padding); enc: [B, S, D] and enc_mask: [B, S] for the decoder.
    Returns the final-normed hidden states [B, L, D].
    """

    config: T5Config
    is_decoder: bool = False

    @nn.compact
    def __call__(self, h, mask, enc=None, enc_mask=None, deterministic: bool = True, self_mask=None):
        """``self_mask``: optional explicit [B|1, 1, L, L] bool self-attention pattern (True = visible) that
        replaces the causal / bidirectional one (the padding ``mask`` still applies)."""
        cfg = self.config
        length = h.shape[1]
        causal = self.is_decoder and cfg.decoder_attention == "causal"
        bidirectional_buckets = cfg.decoder_buckets_bidirectional if self.is_decoder else True
        pos = np.arange(length)
        buckets = relative_position_bucket(
            pos[None, :] - pos[:, None], bidirectional=bidirectional_buckets,
            num_buckets=cfg.relative_attention_num_buckets, max_distance=cfg.relative_attention_max_distance)
        if cfg.relative_attention_bias_per_layer:
            bias = jnp.asarray(buckets)  # each block looks up its own table
        else:
            bias = _relative_bias(cfg, jnp.asarray(buckets))  # [1, H, L, L], shared by all blocks
        self_mask_pad = mask[:, None, None, :]  # [B, 1, 1, L]
        if self_mask is not None:
            self_mask = self_mask_pad & jnp.asarray(self_mask, bool)
        elif causal:
            self_mask = self_mask_pad & jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
        else:
            self_mask = self_mask_pad
        cross_mask = None if enc_mask is None else enc_mask[:, None, None, :]
        num = cfg.num_decoder_layers if self.is_decoder else cfg.num_layers
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        block_cls = layer_class(T5Block, remat=cfg.remat, scan=cfg.scan_layers, length=num,
                                in_axes=(nn.broadcast,) * 5, static_argnums=(6,))
        if cfg.scan_layers:
            h = block_cls(cfg, self.is_decoder, name="layers")(h, bias, self_mask, enc, cross_mask, deterministic)[0]
        for i in range(0 if cfg.scan_layers else num):
            h = block_cls(cfg, self.is_decoder, name=f"block_{i}")(h, bias, self_mask, enc, cross_mask,
                                                                   deterministic)[0]
        h = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name="final_norm")(h)
        return nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)


class T5(nn.Module):
    """T5 encoder-decoder LM: ``__call__`` = ``decode(decoder_input_ids, encode(input_ids))`` -> logits.

    Params (unrolled; ``scan_layers``: ``{encoder,decoder}/layers/...`` in place of the ``block_i``, each
    param with a leading layer axis): ``shared/embedding`` [V, D]; ``encoder/...``, ``decoder/...``
    (``block_i/{self_attention,cross_attention}/{query,key,value,out}/kernel``,
    ``block_i/mlp/{wi|wi_0,wi_1,wo}/kernel``, norms' ``scale``, ``relative_attention_bias/embedding``
    [num_buckets, H] (per block for UMT5:
    ``block_i/relative_attention_bias/embedding``), ``final_norm/scale``); and
    ``lm_head/kernel`` [D, V] when untied. Dropout (``deterministic=False``) needs the "dropout" rng.
    """

    config: T5Config

    def setup(self):
        cfg = self.config
        self.shared = nn.Embed(
            cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=nn.initializers.normal(cfg.initializer_factor * 1.0))
        self.encoder = T5Stack(cfg, is_decoder=False)
        self.decoder = T5Stack(cfg, is_decoder=True)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                kernel_init=nn.initializers.normal(cfg.initializer_factor * 1.0))

    def with_options(self, options) -> "T5":
        """This model laid out and computed as ``options`` (``models.options.ModelOptions``): scanned or
        unrolled blocks, their remat policy, compute and param dtypes."""
        cfg = dataclasses.replace(self.config, scan_layers=options.scan_layers, remat=options.remat,
                                  dtype=options.compute_dtype, param_dtype=options.param_dtype)
        return self.clone(config=cfg)

    def encode(self, input_ids, attention_mask=None, deterministic: bool = True):
        """input_ids: [B, S] int; attention_mask: [B, S] (True = token) -> encoder states [B, S, D]."""
        check_token_ids(input_ids, self.config.vocab_size)  # values: eager calls only (models/inputs.py)
        mask = _as_bool_mask(attention_mask, input_ids.shape)
        return self.encoder(self.shared(input_ids), mask, deterministic=deterministic)

    def decode_hidden(self, decoder_input_ids, encoder_hidden_states, attention_mask=None,
                      decoder_attention_mask=None, deterministic: bool = True, decoder_self_mask=None):
        """Decoder final hidden states [B, T, D] (before any output scaling / LM head).
        ``decoder_self_mask``: optional explicit [B|1, 1, T, T] bool pattern replacing causal/bidirectional."""
        check_token_ids(decoder_input_ids, self.config.vocab_size, name="decoder_input_ids")
        enc_mask = _as_bool_mask(attention_mask, encoder_hidden_states.shape[:2])
        dec_mask = _as_bool_mask(decoder_attention_mask, decoder_input_ids.shape)
        return self.decoder(self.shared(decoder_input_ids), dec_mask, encoder_hidden_states, enc_mask,
                            deterministic=deterministic, self_mask=decoder_self_mask)

    def lm_logits(self, decoder_hidden):
        """[B, T, D] -> logits [B, T, V] float32 (tied: scaled by d_model**-0.5 if configured)."""
        cfg = self.config
        if cfg.scale_decoder_outputs:
            decoder_hidden = decoder_hidden * (cfg.d_model ** -0.5)
        if cfg.tie_word_embeddings:
            logits = self.shared.attend(decoder_hidden)
        else:
            logits = self.lm_head(decoder_hidden)
        return logits.astype(jnp.float32)

    def decode(self, decoder_input_ids, encoder_hidden_states, attention_mask=None,
               decoder_attention_mask=None, deterministic: bool = True, decoder_self_mask=None):
        """decoder_input_ids: [B, T]; encoder_hidden_states: [B, S, D]; attention_mask: encoder padding
        [B, S]; decoder_attention_mask: [B, T]; decoder_self_mask: optional [B|1, 1, T, T] bool explicit
        self-attention pattern -> logits [B, T, V] float32."""
        h = self.decode_hidden(decoder_input_ids, encoder_hidden_states, attention_mask,
                               decoder_attention_mask, deterministic, decoder_self_mask)
        return self.lm_logits(h)

    def __call__(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None,
                 deterministic: bool = True):
        enc = self.encode(input_ids, attention_mask, deterministic)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask, deterministic)


def shift_right(labels, decoder_start_token_id: int = 0, pad_token_id: int = 0) -> jnp.ndarray:
    """Teacher-forcing decoder inputs for AR training: [start, y_0, ..., y_{T-2}]; label -100 -> pad.

    labels: [B, T] int -> [B, T] int32 (as transformers' ``T5PreTrainedModel._shift_right``).
    """
    labels = jnp.asarray(labels)
    shifted = jnp.concatenate(
        [jnp.full(labels.shape[:-1] + (1,), decoder_start_token_id, labels.dtype), labels[..., :-1]], axis=-1)
    return jnp.where(shifted == -100, pad_token_id, shifted).astype(jnp.int32)


def with_decoder_attention(model: T5, mode: str, bidirectional_buckets: Optional[bool] = None) -> T5:
    """Same parameters, decoder self-attention switched to ``mode`` ("causal" | "bidirectional").

    AR2Diff (papers.md 001) stage switch: an AR-trained decoder continues as a diffusion denoiser.
    """
    cfg = dataclasses.replace(model.config, decoder_attention=mode,
                              decoder_bidirectional_buckets=bidirectional_buckets)
    return model.clone(config=cfg)


# Megatron-style tensor parallelism on the "model" mesh axis: q/k/v and wi column-parallel, out and wo
# row-parallel, embeddings vocab-parallel; norms and the small relative-bias tables replicated.
# Paths are '/'-joined param paths, e.g. "encoder/block_0/self_attention/query/kernel"; the patterns
# work with both re.search and re.fullmatch.
SHARDING_RULES = (
    (r".*(self_attention|cross_attention)/(query|key|value)/kernel", (None, "model")),
    (r".*(self_attention|cross_attention)/out/kernel", ("model", None)),
    (r".*mlp/(wi|wi_0|wi_1)/kernel", (None, "model")),
    (r".*mlp/wo/kernel", ("model", None)),
    (r"shared/embedding", ("model", None)),
    (r"lm_head/kernel", (None, "model")),
)
