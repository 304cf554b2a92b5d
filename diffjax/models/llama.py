"""Decoder-only Llama / Qwen2 / Mistral-family LM in Flax linen, matching transformers' PyTorch models.

Architecture (Touvron et al. 2023; Qwen2 and Mistral differences are config fields):
- Token embedding ``embed_tokens`` [V, D]; no absolute positions.
- Pre-norm blocks: ``h += o_proj(Attn(RMSNorm(h)))``; ``h += down(silu(gate(x)) * up(x))`` with
  ``x = RMSNorm(h)`` (SwiGLU). RMSNorm computes the variance in float32 (as HF does).
- Grouped-query attention: ``num_attention_heads`` query heads share ``num_key_value_heads`` K/V heads;
  query head ``h`` uses K/V head ``h // (H / KVH)`` (HF's ``repeat_kv``). Scores scaled by head_dim**-0.5,
  softmax in float32. Optional q/k/v bias (Qwen2: ``qkv_bias``) and o bias (Llama ``attention_bias``).
- Rotary position embedding, HF's ``rotate_half`` convention (first half / second half of head_dim
  pair up), ``inv_freq = theta ** (-arange(0, hd, 2) / hd)``; ``rope_scaling`` "linear" and "llama3"
  (Llama 3.1 frequency smoothing) supported.
- Output head tied to ``embed_tokens`` or an untied ``lm_head``. Logits are float32.

Attention masks (papers.md 001, AR2Diff). ``attention`` picks the pattern, combined with a padding mask
(``attention_mask``: [B, L], True/1 = real token) and an optional sliding window (Mistral / Qwen2):
- ``"causal"``: slot j is visible from slot i iff j <= i (the AR LM).
- ``"prefix"``: causal, plus every slot < ``prefix_length[b]`` is visible from every slot (the prefix
  LM: bidirectional over the prefix, causal after it). ``prefix_length`` counts array slots, so a
  left-padded prefix counts its padding.
- ``"bidirectional"``: every valid slot sees every valid slot (diffusion stages of AR2Diff).
A query row with no visible key (e.g. a left-pad slot under "causal") attends uniformly instead of
producing NaN; such rows are padding and their outputs are meaningless.

Layers: unrolled ``layers_{i}``, or with ``scan_layers`` one ``nn.scan``-ned ``layers`` (params with a leading
layer axis, ``diffjax.models.scan``); ``remat``: "none" | "full" | "dots_saveable" per layer.

KV-cache decoding (AR baseline): ``init_cache(config, B, S)`` gives an empty ``KVCache`` with S slots;
calling the model with ``cache=..., cache_index=i`` writes the new tokens' K/V at slots [i, i + L) and
attends over every valid slot (so the same call does prefill and one-token steps); it returns
``(logits, new_cache)``. ``cache_index`` [B] gives each row its own window (diffusion decoding with a
KV cache: ``kv_cache`` / ``window_logits``). ``generate`` is greedy / temperature sampling as one ``lax.while_loop``.

Shapes: ``input_ids: [B, L] int32``; ``positions: [B, L] int32`` (RoPE positions; default
``arange(L)`` (+ ``cache_index``) as transformers' forward uses; use ``positions_from_mask`` for
left padding); ``prefix_length: [B] int32``; logits ``[B, L, V] float32``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.tokens import choose_tokens
from diffjax.diffusion.cached_decoding import slice_rows, splice_rows
from diffjax.models.layers import ACTIVATIONS, RMSNorm, gated_activation
from diffjax.models.inputs import check_token_ids
from diffjax.models.scan import layer_class, remat_name

Dtype = Any

ATTENTION_MODES = ("causal", "prefix", "bidirectional")
_ROPE_TYPES = ("default", "linear", "llama3")

# Megatron-style tensor parallelism over the "model" mesh axis: column-parallel q/k/v, gate/up
# (output features sharded), row-parallel o/down (input features sharded), vocab-sharded embeddings.
SHARDING_RULES = (
    (r"self_attn/(q_proj|k_proj|v_proj)/kernel", (None, "model")),
    (r"self_attn/(q_proj|k_proj|v_proj)/bias", ("model",)),
    (r"self_attn/o_proj/kernel", ("model", None)),
    (r"mlp/(gate_proj|up_proj)/kernel", (None, "model")),
    (r"mlp/(gate_proj|up_proj)/bias", ("model",)),
    (r"mlp/down_proj/kernel", ("model", None)),
    (r"embed_tokens/embedding", ("model", None)),
    (r"lm_head/kernel", (None, "model")),
)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters (names follow HF ``LlamaConfig`` where they exist).

    ``num_key_value_heads`` None = multi-head attention; ``head_dim`` None = hidden_size / heads.
    ``rope_scaling``: None or a tuple of (name, value) pairs with ``rope_type`` in "linear"
    (``factor``) or "llama3" (``factor``, ``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``). ``qkv_bias`` / ``o_bias``: biases of q,k,v / o projections
    (Llama's ``attention_bias`` sets both; Qwen2 has ``qkv_bias`` only). ``sliding_window``: None or a
    window W (slot j visible from i only if i - j < W) used by the layers whose ``layer_types`` entry
    is "sliding_attention" (``layer_types`` None = every layer uses the window if one is set).
    ``attention``: the default mask mode (overridable per call). ``remat``: rematerialisation of each
    block in the backward pass, "none" | "full" | "dots_saveable" (the old bool: True = "full").
    ``scan_layers``: the blocks as one ``nn.scan`` (params ``layers/...`` [num_hidden_layers, ...], the
    cache's keys / values [num_hidden_layers, B, S, KVH, hd]). ``dtype``: computation dtype;
    ``param_dtype``: parameter dtype.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[tuple] = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: Optional[int] = None
    layer_types: Optional[tuple] = None
    attention: str = "causal"
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2
    pad_token_id: Optional[int] = None
    model_type: str = "llama"
    remat: str = "none"
    scan_layers: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "remat", remat_name(self.remat))
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                 f"{self.num_attention_heads}; set head_dim explicitly.")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads} (grouped-query attention).")
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}.")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}.")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; supported: {sorted(ACTIVATIONS)}.")
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if self.rope_scaling is not None:
            rt = dict(self.rope_scaling).get("rope_type", dict(self.rope_scaling).get("type", "default"))
            if rt not in _ROPE_TYPES:
                raise ValueError(f"rope_scaling type {rt!r} is not supported; supported: {_ROPE_TYPES}.")
        if self.layer_types is not None:
            lt = tuple(self.layer_types)
            object.__setattr__(self, "layer_types", lt)
            if len(lt) != self.num_hidden_layers or not set(lt) <= {"full_attention", "sliding_attention"}:
                raise ValueError(f"layer_types must list 'full_attention'/'sliding_attention' for each of the "
                                 f"{self.num_hidden_layers} layers, got {lt}.")

    def layer_window(self, i: int) -> Optional[int]:
        """The sliding window of layer ``i`` (None = full attention)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[i] == "sliding_attention":
            return int(self.sliding_window)
        return None


# ----------------------------------------------------------------------------- pure helpers


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] float32 (HF ``compute_default_rope_parameters`` + scaling)."""
    dim = config.head_dim
    inv = (1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)
    if config.rope_scaling is None:
        return inv
    rs = dict(config.rope_scaling)
    rt = rs.get("rope_type", rs.get("type", "default"))
    if rt == "linear":
        return (inv / np.float32(rs["factor"])).astype(np.float32)
    if rt == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        scaled = np.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wl < hi_wl) & ~(wl > lo_wl)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotary embedding, HF rotate_half layout. x: [B, L, N, hd]; positions: [B, L] int -> same shape as x."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, L, hd/2]
    cos, sin = jnp.cos(freqs)[:, :, None, :], jnp.sin(freqs)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def positions_from_mask(attention_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """RoPE positions counting only real tokens: ``cumsum(mask) - 1`` clipped at 0, + offset. [B, L] int32.

    With left padding this gives every example positions 0, 1, ... from its first real token
    (what ``transformers.generate`` does), so a padded batch matches each example run alone.
    """
    m = jnp.asarray(attention_mask).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0) + offset


def make_attention_mask(
    mode: str,
    query_slots: jax.Array,
    key_slots: jax.Array,
    key_valid: Optional[jax.Array] = None,
    prefix_length: Optional[jax.Array] = None,
    sliding_window: Optional[int] = None,
) -> jax.Array:
    """Boolean visibility mask [B, 1, Lq, Sk] (True = query may attend to key).

    Args:
      mode: "causal" (key <= query), "prefix" (causal, or key < prefix_length[b]), "bidirectional".
      query_slots: [Lq] or [B, Lq] int, the array slot index of each query.
      key_slots: [Sk] int, the slot index of each key.
      key_valid: [B, Sk] bool (padding / unwritten cache slots are False) or None.
      prefix_length: [B] int, required for "prefix".
      sliding_window: W or None; keeps only keys with |query - key| < W (for the causal part: HF's window).
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}.")
    q = jnp.asarray(query_slots)
    q = q[None] if q.ndim == 1 else q
    q = q[:, :, None]  # [B|1, Lq, 1]
    k = jnp.asarray(key_slots)[None, None, :]  # [1, 1, Sk]
    if mode == "bidirectional":
        m = jnp.ones(jnp.broadcast_shapes(q.shape, k.shape), bool)
    else:
        m = k <= q
        if mode == "prefix":
            if prefix_length is None:
                raise ValueError('attention="prefix" needs prefix_length: [B] int (the prefix length per example).')
            m = m | (k < jnp.asarray(prefix_length)[:, None, None])
    if sliding_window is not None:  # for causal keys this is HF's "key > query - window"
        m = m & (jnp.abs(q - k) < sliding_window)
    if key_valid is not None:
        m = m & jnp.asarray(key_valid, bool)[:, None, :]
    return m[:, None]


class KVCache(NamedTuple):
    """Decode cache. keys/values: per layer [B, S, KVH, hd] (a tuple; scanned layers: one array
    [num_layers, B, S, KVH, hd]); valid: [B, S] bool (slot written with a real token)."""

    keys: tuple
    values: tuple
    valid: jax.Array


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype: Dtype = None) -> KVCache:
    """An empty cache with ``max_length`` slots (prompt + new tokens) for every layer."""
    dtype = dtype or config.dtype
    shape = (batch_size, max_length, config.num_key_value_heads, config.head_dim)
    valid = jnp.zeros((batch_size, max_length), bool)
    if config.scan_layers:
        stacked = (config.num_hidden_layers,) + shape
        return KVCache(jnp.zeros(stacked, dtype), jnp.zeros(stacked, dtype), valid)
    z = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))
    return KVCache(z, tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers)), valid)


# ----------------------------------------------------------------------------- modules


def _dense(cfg: LlamaConfig, features: int, use_bias: bool, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE. x: [B, L, D]; mask: [B, 1, L, S] bool -> [B, L, D]."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, kv_cache=None, cache_index=None):
        cfg = self.config
        B, L, _ = x.shape
        H, KVH, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = _dense(cfg, H * hd, cfg.qkv_bias, "q_proj")(x).reshape(B, L, H, hd)
        k = _dense(cfg, KVH * hd, cfg.qkv_bias, "k_proj")(x).reshape(B, L, KVH, hd)
        v = _dense(cfg, KVH * hd, cfg.qkv_bias, "v_proj")(x).reshape(B, L, KVH, hd)
        inv_freq = rope_inv_freq(cfg)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        new_kv = None
        if kv_cache is not None:
            ck, cv = kv_cache
            idx = jnp.asarray(cache_index, jnp.int32)
            if idx.ndim:  # [B]: a per-row first slot (a window of each row over a full-length cache)
                k, v = splice_rows(ck, k, idx), splice_rows(cv, v, idx)
            else:
                zero = jnp.zeros((), jnp.int32)
                k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (zero, idx, zero, zero))
                v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (zero, idx, zero, zero))
            new_kv = (k, v)
        G = H // KVH
        q = q.reshape(B, L, KVH, G, hd)
        scores = jnp.einsum("blkgd,bskd->bkgls", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
        scores = scores * (hd ** -0.5)
        scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)  # mask: [B,1,1,L,S]
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
        out = jnp.einsum("bkgls,bskd->blkgd", probs, v.astype(cfg.dtype)).reshape(B, L, H * hd)
        return _dense(cfg, cfg.hidden_size, cfg.o_bias, "o_proj")(out), new_kv


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)). [B, L, D] -> [B, L, D]."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        rows = x.reshape(-1, x.shape[-1])  # [B*L, D]: see models/layers.gated_activation
        g = _dense(cfg, cfg.intermediate_size, cfg.mlp_bias, "gate_proj")(rows)
        u = _dense(cfg, cfg.intermediate_size, cfg.mlp_bias, "up_proj")(rows)
        out = _dense(cfg, cfg.hidden_size, cfg.mlp_bias, "down_proj")(gated_activation(cfg.hidden_act, g, u))
        return out.reshape(x.shape[:-1] + (cfg.hidden_size,))


class LlamaBlock(nn.Module):
    """Pre-norm decoder layer (HF ``LlamaDecoderLayer``): ``(h [B, L, D], ...) -> (h, new (k, v) or None)``.

    ``mask``: [B, 1, L, S] bool, or a pair (full, windowed) picked by ``sliding`` (a bool scalar: this layer
    uses the sliding window), as a scanned stack of mixed layer types passes them."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, h, positions, mask, kv_cache=None, cache_index=None, sliding=None):
        cfg = self.config
        if isinstance(mask, tuple):
            mask = jnp.where(sliding, mask[1], mask[0])
        norm = functools.partial(RMSNorm, eps=cfg.rms_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        a, new_kv = LlamaAttention(cfg, name="self_attn")(norm(name="input_layernorm")(h), positions, mask,
                                                           kv_cache, cache_index)
        h = h + a
        h = h + LlamaMLP(cfg, name="mlp")(norm(name="post_attention_layernorm")(h))
        return h, new_kv


class Llama(nn.Module):
    """Decoder-only LM. See the module docstring for masks and the cache.

    Call: ``model.apply({"params": p}, input_ids, attention_mask=None, positions=None, prefix_length=None,
    attention=None, inputs_embeds=None, mask=None, cache=None, cache_index=None, return_hidden=False)``.

    Args:
      input_ids: [B, L] int32 (or None with ``inputs_embeds``: [B, L, D]).
      attention_mask: [B, L] bool/0-1 padding mask (True = real token); None = all real.
      positions: [B, L] int RoPE positions; None = arange(L) + cache_index.
      prefix_length: [B] int, for attention="prefix".
      attention: "causal" | "prefix" | "bidirectional"; None = ``config.attention``.
      mask: optional explicit [B, 1, L, S] bool visibility mask (S = L, or the cache length); replaces the pattern (the padding mask
        and cache validity are still applied).
      cache: a ``KVCache`` (see ``init_cache``) and ``cache_index`` (int scalar, first slot to write; or [B] int,
        a first slot per row, clamped to [0, S - L]: the rows are a window of each row, e.g. the current block of
        diffusion decoding over a cache of the whole row, ``window_logits``).
      return_hidden: also return the final-normed hidden states [B, L, D].
    Returns:
      logits [B, L, V] float32; ``(logits, hidden)`` with return_hidden; ``(..., new_cache)`` with a cache.
    """

    config: LlamaConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                     embedding_init=nn.initializers.normal(cfg.initializer_range))
        # scanned: positions, mask, cache_index the same for every layer; the cache and sliding flag per layer
        block = layer_class(LlamaBlock, remat=cfg.remat, scan=cfg.scan_layers, length=cfg.num_hidden_layers,
                            in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, 0))
        if cfg.scan_layers:
            self.layers = block(cfg, name="layers")
        else:
            self.layers = [block(cfg, name=f"layers_{i}") for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = _dense(cfg, cfg.vocab_size, False, "lm_head")

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [B, L, D] (dtype = config.dtype)."""
        return self.embed_tokens(input_ids)

    def __call__(self, input_ids=None, *, attention_mask=None, positions=None, prefix_length=None,
                 attention=None, inputs_embeds=None, mask=None, cache: Optional[KVCache] = None,
                 cache_index=None, return_hidden=False):
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids [B, L] and inputs_embeds [B, L, D].")
        if input_ids is not None:
            check_token_ids(input_ids, cfg.vocab_size)  # values: eager calls only (models/inputs.py)
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.dtype)
        B, L = h.shape[:2]
        mode = cfg.attention if attention is None else attention
        valid = jnp.ones((B, L), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        if cache is not None:
            if cache_index is None:
                raise ValueError("cache given without cache_index (the first slot to write, int scalar).")
            S = cache.valid.shape[1]
            start = jnp.asarray(cache_index, jnp.int32)
            if start.ndim:  # per-row windows: clamped as the cache writes clamp them
                start = jnp.clip(start, 0, S - L)
                key_valid = splice_rows(cache.valid, valid, start)
            else:
                key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (jnp.zeros((), jnp.int32), start))
        else:
            start, key_valid, S = jnp.zeros((), jnp.int32), valid, L
        query_slots = start[..., None] + jnp.arange(L, dtype=jnp.int32)  # [L], or [B, L] for per-row windows
        if positions is None:
            positions = jnp.broadcast_to(query_slots, (B, L))
        if cfg.scan_layers:
            h, new_cache = self._scan_layers(h, positions, mask, mode, query_slots, S, key_valid, prefix_length,
                                             cache, start)
            return self._head(h, return_hidden, new_cache)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            if mask is not None:
                m = jnp.asarray(mask, bool) & key_valid[:, None, None, :]
            else:
                m = make_attention_mask(mode, query_slots, jnp.arange(S, dtype=jnp.int32), key_valid,
                                        prefix_length, cfg.layer_window(i))
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            h, new_kv = layer(h, positions, m, kv, start if cache is not None else None)
            if cache is not None:
                new_keys.append(new_kv[0])
                new_values.append(new_kv[1])
        new_cache = None if cache is None else KVCache(tuple(new_keys), tuple(new_values), key_valid)
        return self._head(h, return_hidden, new_cache)

    def _scan_layers(self, h, positions, mask, mode, query_slots, S, key_valid, prefix_length, cache, start):
        """The scanned stack: one mask for every layer (or the (full, windowed) pair and a per-layer flag
        when the layers' windows differ) -> (h [B, L, D], the new KVCache or None)."""
        cfg = self.config
        windows = [cfg.layer_window(i) for i in range(cfg.num_hidden_layers)]
        key_slots = jnp.arange(S, dtype=jnp.int32)
        sliding = None
        if mask is not None:
            m = jnp.asarray(mask, bool) & key_valid[:, None, None, :]
        elif len(set(windows)) == 1:
            m = make_attention_mask(mode, query_slots, key_slots, key_valid, prefix_length, windows[0])
        else:
            window = next(w for w in windows if w is not None)
            m = tuple(make_attention_mask(mode, query_slots, key_slots, key_valid, prefix_length, w)
                      for w in (None, window))
            sliding = jnp.asarray([w is not None for w in windows])
        kv = None if cache is None else (cache.keys, cache.values)
        h, new_kv = self.layers(h, positions, m, kv, start if cache is not None else None, sliding)
        return h, (None if cache is None else KVCache(new_kv[0], new_kv[1], key_valid))

    def _head(self, h, return_hidden, new_cache):
        """Final norm and LM head: logits [B, L, V] float32 (and the hidden states, the new cache)."""
        cfg = self.config
        h = self.norm(h)
        if cfg.tie_word_embeddings:
            logits = self.embed_tokens.attend(h)
        else:
            logits = self.lm_head(h)
        out = (logits.astype(jnp.float32), h) if return_hidden else logits.astype(jnp.float32)
        return out if new_cache is None else (out, new_cache)

    def with_options(self, options) -> "Llama":
        """This model laid out and computed as ``options`` (``models.options.ModelOptions``): scanned or
        unrolled layers, their remat policy, compute and param dtypes."""
        cfg = dataclasses.replace(self.config, scan_layers=options.scan_layers, remat=options.remat,
                                  dtype=options.compute_dtype, param_dtype=options.param_dtype)
        return self.clone(config=cfg)


# ----------------------------------------------------------------------------- diffusion decoding with a KV cache


def kv_cache(model: Llama, params, input_ids: jax.Array, mask: jax.Array) -> KVCache:
    """Every layer's keys / values over the whole rows input_ids [B, L] under the visibility mask [B|1, 1, L, L]
    bool (AR2Diff's diffusion stages: bidirectional) -> a ``KVCache`` of L slots, all valid. Its logits are
    computed and dropped (XLA removes them from a jitted program)."""
    B, L = input_ids.shape
    _, cache = model.apply({"params": params}, input_ids, mask=mask, cache=init_cache(model.config, B, L),
                           cache_index=0)
    return cache


def window_logits(model: Llama, params, input_ids: jax.Array, mask: jax.Array, cache: KVCache, start: jax.Array,
                  width: int) -> jax.Array:
    """Logits [B, W, V] of the rows' slots ``[start_b, start_b + W)`` (W = ``width``, ``start`` [B] int clamped to
    [0, L - W]) of input_ids [B, L], computing only those slots: at every layer their fresh K/V replace the
    cached ones there and they attend over all L slots (rows of ``mask`` [B|1, 1, L, L] bool), the cached K/V
    elsewhere; RoPE positions are the slots. With a cache made from the same ids (``kv_cache``) this equals
    the full forward's logits there; with an older one it is Fast-dLLM's approximate cache."""
    B, L = input_ids.shape
    start = jnp.clip(jnp.asarray(start, jnp.int32), 0, L - width)
    rows = slice_rows(jnp.broadcast_to(jnp.asarray(mask, bool), (B, 1, L, L))[:, 0], start, width)[:, None]
    logits, _ = model.apply({"params": params}, slice_rows(input_ids, start, width), mask=rows, cache=cache,
                            cache_index=start)
    return logits


# ----------------------------------------------------------------------------- generation


def generate(model: Llama, params, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None, **kwargs):
    """Autoregressive decoding with a KV cache (``_generate``, one jitted program); the prompt ids
    are checked against the vocabulary first when they are concrete (``models/inputs.py``)."""
    check_token_ids(input_ids, model.config.vocab_size)
    return _generate(model, params, input_ids, attention_mask, **kwargs)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_token_id", "pad_token_id",
                                             "prefix_lm", "temperature", "top_k", "top_p"))
def _generate(model: Llama, params, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None, *,
              max_new_tokens: int, eos_token_id: Optional[int] = None, pad_token_id: int = 0,
              prefix_lm: bool = False, temperature: float = 0.0, rng: Optional[jax.Array] = None,
              top_k: Optional[int] = None, top_p: Optional[float] = None) -> jax.Array:
    """Autoregressive decoding with a KV cache, as one jitted prefill + ``lax.while_loop``.

    Args:
      model: a ``Llama`` module; params: its params (``{"params": ...}`` wrapper optional).
      input_ids: [B, P] int32 prompts; any padding (left or right) marked by ``attention_mask`` [B, P].
      max_new_tokens: N, the number of tokens to produce.
      eos_token_id: stop an example after it emits this id (later slots get ``pad_token_id``).
      prefix_lm: prefill with the prefix-LM mask (bidirectional over the prompt), then causal.
      temperature: 0 = greedy argmax; > 0 samples softmax(logits / temperature) with ``rng``.
      top_k, top_p: when sampling, keep only the k most likely tokens / the nucleus of mass p
        (``diffjax.diffusion.tokens.choose_tokens``, the one token picker); None = off.
    Returns:
      [B, N] int32 new tokens (the prompt is not repeated).
    """
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    B, P = input_ids.shape
    mask = jnp.ones((B, P), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    cfg = model.config
    cache = init_cache(cfg, B, P + max_new_tokens)
    positions = positions_from_mask(mask)
    kw = dict(attention="prefix", prefix_length=jnp.full((B,), P, jnp.int32)) if prefix_lm else dict(attention="causal")
    logits, cache = model.apply({"params": params}, input_ids, attention_mask=mask, positions=positions,
                                cache=cache, cache_index=0, **kw)
    last = P - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # last real slot of each prompt
    logits = logits[jnp.arange(B), last]
    rng = jax.random.key(0) if rng is None else rng

    def pick(logits, key):
        return choose_tokens(logits, key, temperature=temperature if temperature > 0 else 1.0,
                             greedy=not temperature > 0, top_k=top_k, top_p=top_p)[0]

    rng, sub = jax.random.split(rng)
    tokens = jnp.full((B, max_new_tokens), pad_token_id, jnp.int32)
    state = (jnp.zeros((), jnp.int32), tokens, cache, pick(logits, sub), jnp.sum(mask, axis=1).astype(jnp.int32),
             jnp.zeros((B,), bool), rng)

    def cond(state):
        i, _, _, _, _, done, _ = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, tokens, cache, cur, pos, done, rng = state
        tokens = tokens.at[:, i].set(jnp.where(done, pad_token_id, cur))
        if eos_token_id is not None:
            done = done | (cur == eos_token_id)
        logits, cache = model.apply({"params": params}, cur[:, None], positions=pos[:, None], cache=cache,
                                    cache_index=P + i, attention="causal")
        rng, sub = jax.random.split(rng)
        return i + 1, tokens, cache, pick(logits[:, 0], sub), pos + 1, done, rng

    _, tokens, *_ = jax.lax.while_loop(cond, body, state)
    return tokens
